"""task=sample_teacher: the diffusion teacher's Euler/Heun sampler at a given NFE, scored with the metrics
of task=one_step (no training; the teacher rows of the onestep tables). `build_diffusion_teacher` is
shared with divlab.tasks.one_step.

A class-conditional teacher (its network has `label_dim` > 0, e.g. EDM's ImageNet-64 ADM) is sampled with
classes drawn uniformly at random, seeded by `seed` (the class-conditional setting of EDM's and DMD2's FID
samples), or with one fixed class for every sample: `+sample.class_label=K`. The test reference of a data
module without in-memory `points()` (data=image_folder) is the first `sample.eval_samples` test images."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from divlab.data.loaders import split_images
from divlab.errors import ConfigError
from divlab.metrics.image import build_image_scorer, evaluate_image_sampler, log_figure
from divlab.models.edm import sample, sampler_nfe
from divlab.tasks.base import DivlabTask
from divlab.tasks.denoise import build_denoiser


def set_threads(n) -> None:
    if n:
        torch.set_num_threads(int(n))


def build_diffusion_teacher(cfg: DictConfig, datamodule) -> nn.Module:
    """The frozen teacher denoiser: the exact mixture denoiser (teacher.analytic) or a cached EDM network."""
    from divlab.models.gmm_teacher import GMMTeacher
    from divlab.provision.teacher import provision_teacher

    if cfg.teacher.get("analytic", False):
        mixture = getattr(datamodule, "mixture", None)
        if mixture is None:
            raise ConfigError(
                f"teacher={cfg.teacher.get('name', 'edm_gmm_exact')} is the exact denoiser of a "
                f"Gaussian mixture, but data={cfg.data.name} is not one; use teacher=edm_mlp2d"
            )
        return GMMTeacher.from_mixture(mixture).eval().requires_grad_(False)
    if cfg.teacher.get("train", {}).get("task", "classify") != "denoise" and cfg.teacher.checkpoint in (
        None,
        "auto",
    ):
        raise ConfigError(
            "teacher.train.task must be denoise for a diffusion teacher; choose teacher=edm_mlp2d"
        )
    return provision_teacher(cfg, build_denoiser(cfg.teacher.model, cfg.data))


def build_teacher_sampler(cfg: DictConfig, *, datamodule=None) -> TeacherSampler:
    """task.builder of task=sample_teacher (task.fit: false): the teacher's sampler at a given NFE."""
    s = cfg.sample
    set_threads(s.get("torch_threads"))
    sampler_nfe(s.method, s.num_steps)
    teacher = build_diffusion_teacher(cfg, datamodule)
    label_dim = int(getattr(getattr(teacher, "net", None), "label_dim", 0) or 0)
    class_label = s.get("class_label")  # not in conf/task/sample_teacher.yaml: run hashes stay as they were
    if class_label is not None and not (label_dim and 0 <= int(class_label) < label_dim):
        raise ConfigError(
            f"sample.class_label={class_label} needs a class-conditional teacher with a class in "
            f"[0, {label_dim}); this teacher has label_dim {label_dim}"
        )
    return TeacherSampler(
        teacher=teacher,
        label_dim=label_dim,
        class_label=None if class_label is None else int(class_label),
        method=s.method,
        num_steps=s.num_steps,
        eval_samples=s.eval_samples,
        run_dir=cfg.get("run_dir"),
        seed=cfg.seed,
        image_scorer=build_image_scorer(cfg, datamodule) if datamodule is not None else None,
    )


class TeacherSampler(DivlabTask):
    def __init__(
        self,
        *,
        teacher: nn.Module,  # frozen denoiser
        label_dim: int = 0,  # classes of a class-conditional teacher; 0 = unconditional
        class_label: int | None = None,  # one class for every sample (None: uniform, seeded)
        method: str,  # euler | heun
        num_steps: int,  # sampler steps (NFE: euler = steps, heun = 2 steps - 1)
        eval_samples: int = 2048,  # samples scored
        run_dir: str | None = None,
        seed: int = 0,
        image_scorer=None,
    ):  # divlab.metrics.image.ImageScorer on image data (None: 2-D metrics)
        super().__init__(seed=seed, task_name="sample_teacher")
        self.hold_frozen("teacher", teacher)
        self.hold_frozen("image_scorer", image_scorer)
        self.label_dim, self.class_label = label_dim, class_label
        self.method, self.num_steps, self.eval_samples, self.run_dir = (
            method,
            num_steps,
            eval_samples,
            run_dir,
        )

    def test_step(self, batch, batch_idx):
        pass

    def class_labels(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Classes of n samples: the fixed class_label, or uniform draws from `generator` (None: unconditional)."""
        if not self.label_dim:
            return None
        if self.class_label is not None:
            return torch.full((n,), self.class_label, dtype=torch.long, device=self.device)
        return torch.randint(self.label_dim, (n,), generator=generator).to(self.device)

    def teacher_sampler(self):
        """z -> samples of the teacher's sampler; a conditional teacher gets class_labels(len(z)) per call."""
        teacher = self.frozen("teacher")
        gen = torch.Generator().manual_seed(20_000 + self.seed)  # the classes, apart from the latents' seed

        def sampler(z: torch.Tensor) -> torch.Tensor:
            labels = self.class_labels(len(z), gen)
            denoiser = teacher if labels is None else (lambda x, sigma: teacher(x, sigma, labels))
            return sample(denoiser, z, method=self.method, num_steps=self.num_steps)

        return sampler

    def on_test_epoch_end(self) -> None:
        from divlab.metrics.generative import evaluate_sampler

        dm = self.trainer.datamodule
        nfe = sampler_nfe(self.method, self.num_steps)
        plot = (
            Path(self.run_dir) / "samples.png" if self.run_dir is not None and self.global_rank == 0 else None
        )
        teacher = self.teacher_sampler()
        title = f"teacher, {self.method} NFE {nfe}"
        scorer = self.frozen("image_scorer")
        if scorer is not None:
            metrics = evaluate_image_sampler(
                teacher,
                scorer,
                n=self.eval_samples,
                nfe=nfe,
                seed=self.seed,
                device=self.device,
                plot_path=plot,
                title=title,
            )
            if plot is not None:
                log_figure(self.loggers, "samples", plot)
        else:
            metrics = evaluate_sampler(
                teacher,
                reference=(
                    dm.points("test")
                    if hasattr(dm, "points")
                    else split_images(dm, "test", limit=self.eval_samples)
                ),
                mixture=getattr(dm, "mixture", None),
                n=self.eval_samples,
                nfe=nfe,
                seed=self.seed,
                device=self.device,
                plot_path=plot,
                title=title,
            )
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
