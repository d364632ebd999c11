"""task=superpose: sample from two diffusion models trained on two parts of a 2-D mixture, superposed
at sampling time by SuperDiff (OR, AND; divlab.objectives.superdiff), against the kappa = 1/2 average and
each model alone. Sampling only (`task.fit: false`): everything happens in `trainer.test`.

Models (the `teacher` group, applied to each of the two `superpose.parts` of the mixture):
  teacher=edm_gmm_exact  the exact denoiser of each part (divlab.models.gmm_teacher.GMMTeacher); no
                         training, and the tracked log-densities can be checked against exact ones.
  teacher=edm_mlp2d      an EDM MLP per part, trained once by task=denoise on data.datamodule.subset=<part>
                         and cached like every teacher (divlab.provision).

Test metrics (test/<name>, and test/<sampler>/<name> for each sampler of `superpose.samplers`):
  cov1, cov2         mode coverage of part 1 / part 2: fraction of the part's modes holding >= 1% of
                     the samples within `near_stds` component stds of their mean
  near1_only, near2_only, near_shared, off_mode
                     fractions of samples near a mode of part 1 only, part 2 only, of both parts,
                     or of none
  dlogq_abs_mean, dlogq_abs_median, dlogq_mean
                     |log q1 - log q2| (and the signed mean) at sigma_min, with the *exact* densities
                     of the two parts of the data
  frac_both_high     fraction of samples in the high-density region of both parts: log q_i(x) >=
                     tau_i, tau_i the (1 - hdr_mass) quantile of log q_i on exact samples of part i
  ito_abs_err        mean |tracked log q_i - exact log q_i| over both models (how good (S4) was)
  ito_dlogq_abs_mean |l_1 - l_2| from the tracked values (what the sampler itself saw)
  kappa_outside      fraction of (step, sample) pairs with kappa outside [0, 1] (AND only, by design)
  union_precision, union_recall, union_mmd, union_sliced_w, union_energy
                     divlab.metrics.generative against exact samples of the OR target w_1 q1 + w_2 q2
                     (on the first 1,000 samples)
  nfe, sec_per_1k    denoiser evaluations per sample, wall seconds per 1,000 samples
Figures in the run directory: samples.png (scatter per sampler over the two parts' data) and
dlogq_hist.png (histograms of log q1 - log q2 per sampler); samples.pt holds the samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from divlab.errors import ConfigError
from divlab.metrics.superdiff import (
    density_metrics,
    hdr_thresholds,
    mode_metrics,
    part_log_densities,
    plot_dlogq_histograms,
    plot_samples,
    union_metrics,
    union_mixture,
)
from divlab.objectives.superdiff import superdiff_sample
from divlab.tasks.base import DivlabTask

SAMPLERS = {  # name -> (rule, extra keyword arguments of superdiff_sample)
    "model1": ("fixed", {"kappa": (1.0, 0.0)}),
    "model2": ("fixed", {"kappa": (0.0, 1.0)}),
    "average": ("fixed", {"kappa": (0.5, 0.5)}),  # (S7)
    "or": ("or", {}),  # (S5)
    "and": ("and", {}),  # (S6)
}


def build(cfg: DictConfig, *, datamodule=None) -> SuperposeTask:
    """task.builder of task=superpose: the two part models (exact, or trained once per part and cached)
    and the sampling settings."""
    sc = cfg.superpose
    samplers = list(sc.samplers) if OmegaConf.is_list(sc.samplers) else [sc.samplers]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if not samplers or unknown:
        raise ConfigError(f"superpose.samplers must list names from {', '.join(SAMPLERS)}, got {samplers!r}")
    mixture = getattr(datamodule, "mixture", None)
    if mixture is None:
        raise ConfigError(
            f"superpose needs a Gaussian-mixture data set (its parts' exact densities are the "
            f"reference), got data={cfg.data.name}; choose data=grid25 or data=ring8"
        )
    if getattr(datamodule, "subset", None) is not None:
        raise ConfigError(
            "superpose splits the data itself (superpose.parts); set data.datamodule.subset=null"
        )
    parts = check_parts(sc.parts, mixture.num_components)
    part_mixtures = [mixture.restrict(p) for p in parts]
    for key, low in (("num_samples", 1), ("num_steps", 1)):
        if not isinstance(sc[key], int) or sc[key] < low:
            raise ConfigError(f"superpose.{key} must be an integer >= {low}, got {sc[key]!r}")
    if not 0.0 < sc.hdr_mass < 1.0:
        raise ConfigError(f"superpose.hdr_mass must be in (0, 1), got {sc.hdr_mass!r}")
    if not sc.near_stds > 0:
        raise ConfigError(f"superpose.near_stds must be > 0, got {sc.near_stds!r}")
    if not sc.or_temperature > 0:
        raise ConfigError(f"superpose.or_temperature must be > 0, got {sc.or_temperature!r}")
    if len(sc.or_weights) != 2 or not all(w > 0 for w in sc.or_weights):
        raise ConfigError(f"superpose.or_weights must be two positive numbers, got {list(sc.or_weights)!r}")
    models = part_models(cfg, parts, part_mixtures)
    return SuperposeTask(
        models=models,
        part_mixtures=part_mixtures,
        parts=parts,
        samplers=samplers,
        **sampling_settings(sc),
        near_stds=sc.near_stds,
        hdr_mass=sc.hdr_mass,
        seed=cfg.seed,
        run_dir=cfg.get("run_dir"),
        plots=sc.plots,
    )


def sampling_settings(sc: DictConfig) -> dict:
    """The `superpose.*` sampler settings both SuperDiff tasks take, as constructor keywords."""
    return {
        "num_samples": sc.num_samples,
        "num_steps": sc.num_steps,
        "sigma_min": sc.sigma_min,
        "sigma_max": sc.sigma_max,
        "rho": sc.rho,
        "temperature": sc.or_temperature,
        "weights": list(sc.or_weights),
    }


def log_sampler_metrics(task: DivlabTask, name: str, metrics: dict) -> None:
    """test/<sampler>/<metric>, and test/<metric> too when the run has one sampler."""
    for key, value in metrics.items():
        task.log(f"test/{name}/{key}", value)
        if len(task.samplers) == 1:
            task.log(f"test/{key}", value)


def part_models(cfg: DictConfig, parts: list[list[int]], part_mixtures) -> list:
    """teacher.analytic: the exact denoiser of each part; else the EDM denoiser of cfg.teacher trained on
    data.datamodule.subset=<part> by task=denoise, once, and cached (divlab.provision)."""
    from divlab.models.gmm_teacher import GMMTeacher

    teacher = cfg.get("teacher")
    if teacher is None or "analytic" not in teacher:
        raise ConfigError(
            "superpose needs a diffusion teacher; choose teacher=edm_gmm_exact (exact) or "
            "teacher=edm_mlp2d (trained per part)"
        )
    if teacher.analytic:
        return [GMMTeacher.from_mixture(m) for m in part_mixtures]
    if teacher.train.get("task") != "denoise":
        raise ConfigError(
            f"teacher.train.task={teacher.train.get('task')!r} does not train a diffusion model; "
            f"choose teacher=edm_mlp2d (teacher.train.task=denoise)"
        )
    from divlab.provision.teacher import provision_teacher
    from divlab.tasks.denoise import build_denoiser

    models = []
    for part in parts:
        part_cfg = cfg.copy()
        with open_dict(part_cfg):
            part_cfg.data.datamodule.subset = list(part)
        models.append(provision_teacher(part_cfg, build_denoiser(part_cfg.teacher.model, part_cfg.data)))
    return models


def check_parts(parts, num_components: int) -> list[list[int]]:
    if parts is None or len(parts) != 2:
        raise ConfigError("superpose.parts must be two lists of mixture components, e.g. [[0, 1], [2, 3]]")
    out = []
    for i, part in enumerate(parts):
        labels = sorted({int(c) for c in part})
        if not labels or labels[0] < 0 or labels[-1] >= num_components:
            raise ConfigError(
                f"superpose.parts[{i}] must list components in [0, {num_components - 1}], got {list(part)!r}"
            )
        out.append(labels)
    if out[0] == out[1]:
        raise ConfigError("superpose.parts are equal; give the two models different parts of the data")
    return out


# ----------------------------------------------------------------------------- task


class SuperposeTask(DivlabTask):
    def __init__(
        self,
        *,
        models: list,  # two denoisers D_i(x, sigma), frozen
        part_mixtures: list,  # the two parts of the data (exact reference densities)
        parts: list[list[int]],  # their mixture components
        samplers: list[str],  # names from SAMPLERS
        num_samples: int = 2000,  # samples per sampler
        num_steps: int = 200,  # reverse-SDE steps sigma_max -> sigma_min
        sigma_min: float = 0.002,  # samples and densities are taken at this noise level
        sigma_max: float = 80.0,  # first noise level
        rho: float = 7.0,  # Karras schedule exponent
        temperature: float = 1.0,  # OR temperature T
        weights: list | None = None,  # OR mixture weights (w_1, w_2)
        near_stds: float = 3.0,  # "near a mode" = within this many component stds
        hdr_mass: float = 0.99,  # mass of each part's high-density region
        seed: int = 0,  # latents and path noise
        run_dir: str | None = None,  # figures and samples.pt go here (rank 0)
        plots: bool = True,
    ):
        super().__init__(seed=seed, task_name="superpose")
        for i, m in enumerate(models):  # held outside the module tree: never saved
            self.hold_frozen(f"model{i + 1}", m)
        self.part_mixtures, self.parts, self.samplers = part_mixtures, parts, samplers
        self.settings = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.temperature, self.weights = temperature, weights
        self.num_samples, self.near_stds, self.hdr_mass = num_samples, near_stds, hdr_mass
        self.run_dir, self.plots = run_dir, plots
        self.results: dict = {}

    def test_step(self, batch, batch_idx):
        pass  # the work is done once, in on_test_epoch_end

    def sample(self, name: str):
        rule, extra = SAMPLERS[name]
        if rule == "or":
            extra = {"temperature": self.temperature, "weights": self.weights}
        generator = torch.Generator().manual_seed(self.seed)
        latents = torch.randn(self.num_samples, 2, generator=generator, dtype=torch.float64)
        models = [self.frozen(f"model{i + 1}") for i in range(len(self._frozen))]
        start = time.time()
        result = superdiff_sample(
            models, latents.to(self.device), rule=rule, generator=generator, **self.settings, **extra
        )
        return result, time.time() - start

    def on_test_epoch_end(self) -> None:
        sigma_min = self.settings["sigma_min"]
        taus = hdr_thresholds(self.part_mixtures, sigma=sigma_min, mass=self.hdr_mass)
        union = union_mixture(self.part_mixtures, self.weights or [0.5, 0.5])
        for name in self.samplers:
            result, seconds = self.sample(name)
            x = result.x.cpu()
            exact = part_log_densities(self.part_mixtures, x, sigma_min)
            metrics = {
                **mode_metrics(x, self.part_mixtures, self.parts, near_stds=self.near_stds),
                **density_metrics(x, result.log_q.cpu(), exact, taus),
                **union_metrics(x, union),
                "kappa_outside": result.kappa_outside,
                "nfe": float(result.nfe),
                "sec_per_1k": seconds * 1000.0 / self.num_samples,
            }
            self.results[name] = {"x": x, "exact": exact, "tracked": result.log_q.cpu(), "metrics": metrics}
            log_sampler_metrics(self, name, metrics)
        if self.plots and self.run_dir and self.trainer.is_global_zero:
            self.save_artifacts(Path(self.run_dir))

    def save_artifacts(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {name: {k: r[k] for k in ("x", "exact", "tracked")} for name, r in self.results.items()},
            run_dir / "samples.pt",
        )
        plot_samples(self.results, self.part_mixtures, run_dir / "samples.png")
        plot_dlogq_histograms(self.results, run_dir / "dlogq_hist.png")

    def configure_optimizers(self):
        return None
