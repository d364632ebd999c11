"""task=superpose_images: SuperDiff (Skreta et al. 2025; divlab.objectives.superdiff, equations (S1)-(S7))
on images. Two EDM denoisers, each trained on a subset of the classes (8x8 digits 0-4 and 5-9), are
superposed at sampling time by OR (S5) and AND (S6), against the kappa = 1/2 score average (S7) and each model
alone. Sampling only (`task.fit: false`): everything happens in `trainer.test`.

The part models are the `teacher` config applied to each of `superpose.parts`: a diffusion teacher (e.g.
teacher=edm_songunet_digits) trained once by task=denoise on data.datamodule.subset=<part> and cached like
every teacher (divlab.provision). The samplers work on flattened images; the tracked Ito log-densities (S4)
and the sampler's kappa are as on 2-D data (divlab.tasks.superpose).

Test metrics (test/<sampler>/<name>, and test/<name> when one sampler is listed): the part and class metrics
of divlab.metrics.superdiff_images (frac_part1, frac_part2, part_mass1, class_entropy, classes_covered, cov1,
cov2, ambiguous, split_mass), the classifier metrics of divlab.metrics.image against the full test set (fd,
class_tv, class_conf, precision, recall), ito_dlogq_abs_mean (|l_1 - l_2| of the tracked log-densities at
sigma_min, nats), kappa_outside (AND only), nfe and sec_per_1k.
Figures in the run directory: samples.png (a grid per sampler next to the test images), part_mass_hist.png
(histograms of the classifier's mass on part 1); samples.pt holds the samples and class probabilities.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.metrics.image import build_image_scorer, image_grid
from divlab.metrics.superdiff_images import part_metrics, plot_part_mass
from divlab.objectives.superdiff import superdiff_sample
from divlab.tasks.base import DivlabTask
from divlab.tasks.superpose import SAMPLERS, log_sampler_metrics, sampling_settings


def build(cfg: DictConfig, *, datamodule=None) -> SuperposeImagesTask:
    """task.builder of task=superpose_images: the two part models (trained once per part and cached), the
    metric classifier and the sampling settings."""
    sc = cfg.superpose
    samplers = list(sc.samplers) if OmegaConf.is_list(sc.samplers) else [sc.samplers]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if not samplers or unknown:
        raise ConfigError(f"superpose.samplers must list names from {', '.join(SAMPLERS)}, got {samplers!r}")
    shape = tuple(getattr(datamodule, "input_shape", ()) or ())
    if len(shape) != 3 or not hasattr(datamodule, "labels"):
        raise ConfigError(
            f"superpose_images needs a labelled image data set, got data={cfg.data.name}; choose data=digits "
            f"(2-D mixtures: task=superpose)"
        )
    if getattr(datamodule, "subset", None) is not None:
        raise ConfigError(
            "superpose_images splits the data itself (superpose.parts); set data.datamodule.subset=null"
        )
    parts = check_class_parts(sc.parts, int(cfg.data.num_classes))
    for key in ("num_samples", "num_steps"):
        if not isinstance(sc[key], int) or sc[key] < 1:
            raise ConfigError(f"superpose.{key} must be an integer >= 1, got {sc[key]!r}")
    if not 0.0 < sc.ambiguous_mass <= 0.5:
        raise ConfigError(f"superpose.ambiguous_mass must be in (0, 0.5], got {sc.ambiguous_mass!r}")
    if not sc.or_temperature > 0:
        raise ConfigError(f"superpose.or_temperature must be > 0, got {sc.or_temperature!r}")
    if len(sc.or_weights) != 2 or not all(w > 0 for w in sc.or_weights):
        raise ConfigError(f"superpose.or_weights must be two positive numbers, got {list(sc.or_weights)!r}")
    check_teacher(cfg)
    scorer = build_image_scorer(cfg, datamodule)
    if scorer is None:
        raise ConfigError(
            "superpose_images scores samples with a classifier; set image_metrics (see "
            "conf/experiment/onestep/_digits_common.yaml)"
        )
    return SuperposeImagesTask(
        models=[FlatDenoiser(m, shape) for m in class_part_models(cfg, parts)],
        scorer=scorer,
        parts=parts,
        shape=shape,
        samplers=samplers,
        **sampling_settings(sc),
        ambiguous_mass=sc.ambiguous_mass,
        seed=cfg.seed,
        run_dir=cfg.get("run_dir"),
        plots=sc.plots,
    )


def check_class_parts(parts, num_classes: int) -> list[list[int]]:
    if parts is None or len(parts) != 2:
        raise ConfigError(
            "superpose.parts must be two lists of classes, e.g. [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]"
        )
    out = []
    for i, part in enumerate(parts):
        labels = sorted({int(c) for c in part})
        if not labels or labels[0] < 0 or labels[-1] >= num_classes:
            raise ConfigError(
                f"superpose.parts[{i}] must list classes in [0, {num_classes - 1}], got {list(part)!r}"
            )
        out.append(labels)
    if out[0] == out[1]:
        raise ConfigError("superpose.parts are equal; give the two models different classes")
    return out


def check_teacher(cfg: DictConfig) -> bool:
    """True for an exact (analytic) teacher; a trained one must be a diffusion model (task=denoise)."""
    teacher = cfg.get("teacher")
    analytic = teacher is not None and bool(teacher.get("analytic", False))
    if teacher is None or not (analytic or teacher.get("train", {}).get("task") == "denoise"):
        raise ConfigError(
            "superpose_images needs a diffusion teacher; choose teacher=edm_songunet_digits (trained per "
            "part by task=denoise), teacher=edm_unet_digits or teacher=edm_gmm_exact (exact, no training)"
        )
    return analytic


def class_part_models(cfg: DictConfig, parts: list[list[int]]) -> list[nn.Module]:
    """One denoiser per part, built on data.datamodule.subset=<part>: with teacher.analytic (teacher=
    edm_gmm_exact) the exact denoiser of the part's training images (their empirical distribution, a mixture of
    point masses: divlab.models.gmm_teacher with std 0; it reproduces training images, so the subsets of its
    samples are known); else the EDM denoiser of cfg.teacher trained by task=denoise, once per part, and cached
    (divlab.provision: the subset is part of the data config, so of the cache hash)."""
    from divlab.models.gmm_teacher import GMMTeacher
    from divlab.provision.teacher import provision_teacher
    from divlab.tasks.denoise import build_denoiser
    from divlab.utils.checks import build as build_spec

    analytic = check_teacher(cfg)
    models = {}
    # odd seeds provision the parts in reverse order: the first two cells of a table (seeds 0 and 1 of its
    # first row) then train the two part models at the same time, under their own cache locks
    for i in range(len(parts)) if cfg.seed % 2 == 0 else reversed(range(len(parts))):
        part = parts[i]
        part_cfg = cfg.copy()
        with open_dict(part_cfg):
            part_cfg.data.datamodule.subset = list(part)
        if analytic:
            images = build_spec(part_cfg.data.datamodule, seed=0).points("train").flatten(1)
            models[i] = GMMTeacher(means=images, stds=0.0, weights=torch.ones(len(images)))
        else:
            models[i] = provision_teacher(part_cfg, build_denoiser(part_cfg.teacher.model, part_cfg.data))
    return [models[i] for i in range(len(parts))]


class FlatDenoiser(nn.Module):
    """D(x, sigma) on flattened images (B, C*H*W), as divlab.objectives.superdiff samples them."""

    def __init__(self, denoiser: nn.Module, shape: tuple):  # shape: (C, H, W)
        super().__init__()
        self.denoiser, self.shape = denoiser, tuple(shape)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoiser(x.reshape(-1, *self.shape), sigma).flatten(1)


class SuperposeImagesTask(DivlabTask):
    def __init__(
        self,
        *,
        models: list,  # two FlatDenoisers, frozen
        scorer,  # divlab.metrics.image.ImageScorer (metric classifier and test images)
        parts: list[list[int]],  # the classes each model was trained on
        shape: tuple,  # (C, H, W) of one image
        samplers: list[str],  # names from divlab.tasks.superpose.SAMPLERS
        num_samples: int = 500,  # samples per sampler
        num_steps: int = 100,  # reverse-SDE steps sigma_max -> sigma_min
        sigma_min: float = 0.002,  # samples are taken at this noise level
        sigma_max: float = 80.0,  # first noise level
        rho: float = 7.0,  # Karras schedule exponent
        temperature: float = 1.0,  # OR temperature T
        weights: list | None = None,  # OR mixture weights (w_1, w_2)
        ambiguous_mass: float = 0.25,  # "ambiguous": min(P_1, P_2) >= this
        seed: int = 0,  # latents and path noise
        run_dir: str | None = None,  # figures and samples.pt go here (rank 0)
        plots: bool = True,
    ):
        super().__init__(seed=seed, task_name="superpose_images")
        for i, m in enumerate(models):  # held outside the module tree: never saved
            self.hold_frozen(f"model{i + 1}", m)
        self.hold_frozen("scorer", scorer)
        self.parts, self.shape, self.samplers = parts, shape, samplers
        self.settings = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.temperature, self.weights = temperature, weights
        self.num_samples, self.ambiguous_mass = num_samples, ambiguous_mass
        self.run_dir, self.plots = run_dir, plots
        self.results: dict = {}

    def test_step(self, batch, batch_idx):
        pass  # the work is done once, in on_test_epoch_end

    def sample(self, name: str):
        rule, extra = SAMPLERS[name]
        if rule == "or":
            extra = {"temperature": self.temperature, "weights": self.weights}
        generator = torch.Generator().manual_seed(self.seed)
        dim = int(torch.tensor(self.shape).prod())
        latents = torch.randn(self.num_samples, dim, generator=generator, dtype=torch.float64)
        models = [self.frozen("model1"), self.frozen("model2")]
        start = time.time()
        result = superdiff_sample(
            models, latents.to(self.device), rule=rule, generator=generator, **self.settings, **extra
        )
        return result, time.time() - start

    def on_test_epoch_end(self) -> None:
        scorer = self.frozen("scorer")
        for name in self.samplers:
            result, seconds = self.sample(name)
            images = result.x.float().cpu().reshape(-1, *self.shape)
            probs = scorer.embed(images)[0]
            tracked = result.log_q.cpu()
            metrics = {
                **part_metrics(probs, self.parts, ambiguous_mass=self.ambiguous_mass),
                **scorer(images),
                "ito_dlogq_abs_mean": float((tracked[0] - tracked[1]).abs().mean()),
                "kappa_outside": result.kappa_outside,
                "nfe": float(result.nfe),
                "sec_per_1k": seconds * 1000.0 / self.num_samples,
            }
            self.results[name] = {"x": images, "probs": probs, "tracked": tracked, "metrics": metrics}
            log_sampler_metrics(self, name, metrics)
        if self.plots and self.run_dir and self.trainer.is_global_zero:
            self.save_artifacts(Path(self.run_dir))

    def save_artifacts(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {name: {k: r[k] for k in ("x", "probs", "tracked")} for name, r in self.results.items()},
            run_dir / "samples.pt",
        )
        panels = {"data (test)": self.frozen("scorer").reference[:100]}
        panels.update({name: r["x"][:100] for name, r in self.results.items()})
        image_grid(run_dir / "samples.png", panels, title="SuperDiff on digits: samples per sampler")
        plot_part_mass(self.results, run_dir / "part_mass_hist.png", parts=self.parts)

    def configure_optimizers(self):
        return None
