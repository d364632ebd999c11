"""Train an EDM denoiser (Karras et al. 2022): the diffusion teachers of one-step distillation and SuperDiff.

    loss = E_{x0, ln sigma ~ N(P_mean, P_std^2), n} lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2     (EDM eq. 2, Table 1)

with D = EDMPrecond(net) (divlab.models.edm). An exponential moving average of the weights
(half-life in optimiser steps, as EDM's ema_halflife_kimg) is what validation, tests, the
cached teacher and the samplers use. Validation uses fixed noise (seeded by batch index), so
val/loss is comparable across epochs and runs. On 2-D data the test stage also samples with
Heun (`sample_method`, `sample_steps`) and logs the sample metrics of divlab.metrics.generative.
`build_teacher_task` is the `teacher.train.builder` of the diffusion teachers (divlab.provision).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from divlab.errors import ConfigError
from divlab.models.edm import EDMLoss, EDMPrecond, sample, sample_sigma, sampler_nfe
from divlab.tasks.base import DivlabTask, optimizer_config


def build_denoiser(model_cfg: DictConfig, data_cfg: DictConfig) -> EDMPrecond:
    """EDMPrecond around the raw network of `model_cfg`, with the data config's sigma_data."""
    from divlab.utils.checks import build as build_spec

    sigma_data = data_cfg.get("sigma_data")
    if sigma_data is None:
        raise ConfigError(
            f"data={data_cfg.get('name')} has no sigma_data; set data.sigma_data (the per-coordinate "
            f"std of the data) to train or use an EDM denoiser on it"
        )
    return EDMPrecond(build_spec(model_cfg), sigma_data=float(sigma_data))


def build(cfg: DictConfig, *, datamodule=None) -> DenoiseTask:
    """task.builder of task=denoise: trains `student.model` (a raw denoiser network) as an EDM denoiser."""
    from divlab.tasks.classify import optimization

    d = cfg.denoise
    if d.get("torch_threads"):
        torch.set_num_threads(int(d.torch_threads))
    return DenoiseTask(
        model=build_denoiser(cfg.student.model, cfg.data),
        p_mean=d.p_mean,
        p_std=d.p_std,
        ema_halflife_steps=d.ema_halflife_steps,
        sample_method=d.sample_method,
        sample_steps=d.sample_steps,
        eval_samples=d.eval_samples,
        run_dir=cfg.get("run_dir"),
        **optimization(cfg),
    )


def build_teacher_task(cfg: DictConfig, recipe: DictConfig):
    """teacher.train.builder of EDM teachers: (the EMA network to cache, DenoiseTask that trains it, metadata)."""
    from hydra.utils import instantiate

    from divlab.tasks.classify import cosine_schedule

    task = DenoiseTask(
        model=build_denoiser(cfg.teacher.model, cfg.data),
        optimizer=instantiate(recipe.optimizer),
        scheduler=cosine_schedule(recipe),
        seed=recipe.seed,
        ema_halflife_steps=recipe.ema_halflife_steps,
        sample_steps=recipe.sample_steps,
        eval_samples=recipe.eval_samples,
        task_name="teacher",
    )
    return task.ema.module, task, {"sigma_data": task.model.sigma_data}


class EMA(nn.Module):
    """theta_ema <- beta theta_ema + (1 - beta) theta with beta = 0.5^(1 / halflife_steps); buffers copied."""

    def __init__(
        self, model: nn.Module, *, halflife_steps: float
    ):  # steps after which an old weight's share has halved; 0 = no averaging
        super().__init__()
        if halflife_steps < 0:
            raise ConfigError(f"the EMA half-life must be >= 0 steps, got {halflife_steps!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta = 0.5 ** (1.0 / halflife_steps) if halflife_steps > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - self.beta)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class DenoiseTask(DivlabTask):
    def __init__(
        self,
        *,
        model: EDMPrecond,  # the denoiser D(x; sigma) being trained
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (per epoch)
        seed: int = 0,  # reseeds torch at every epoch start (exact resumes)
        p_mean: float = -1.2,  # ln sigma ~ N(p_mean, p_std^2) in training
        p_std: float = 1.2,
        ema_halflife_steps: float = 500.0,  # EMA of the weights used for eval and sampling
        sample_method: str = "heun",  # test-time sampler on 2-D data
        sample_steps: int = 18,  # its steps (heun: NFE = 2 steps - 1)
        eval_samples: int = 2048,  # samples drawn for the test metrics
        run_dir: str | None = None,  # scatter plot of the test samples goes here
        task_name: str = "denoise",
    ):  # recorded in checkpoints
        super().__init__(seed=seed, task_name=task_name, best_metric="val/loss", best_mode="min")
        self.model = model
        self.ema = EMA(model, halflife_steps=ema_halflife_steps)
        self.loss_fn = EDMLoss(sigma_data=model.sigma_data, p_mean=p_mean, p_std=p_std)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        sampler_nfe(sample_method, sample_steps)
        self.sample_method, self.sample_steps, self.eval_samples = sample_method, sample_steps, eval_samples
        self.run_dir = run_dir

    def training_step(self, batch, batch_idx):
        x0 = batch[0]
        loss = self.loss_fn(self.model, x0).mean()
        self.track("loss", loss, len(x0))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update(self.model)

    def fixed_noise_loss(self, x0: torch.Tensor, batch_idx: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(10_007 * batch_idx + 17)
        sigma = sample_sigma(len(x0), p_mean=self.loss_fn.p_mean, p_std=self.loss_fn.p_std, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        sigma, noise = sigma.to(x0), noise.to(x0)
        noisy = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        err = (self.ema(noisy, sigma) - x0) ** 2
        from divlab.models.edm import edm_loss_weight

        return (edm_loss_weight(sigma, self.model.sigma_data) * err.flatten(1).mean(1)).mean()

    def validation_step(self, batch, batch_idx):
        self.log(
            "val/loss", self.fixed_noise_loss(batch[0], batch_idx), batch_size=len(batch[0]), sync_dist=True
        )

    def on_validation_epoch_end(self) -> None:
        self.update_best(float(self.trainer.callback_metrics.get("val/loss", math.inf)))

    def test_step(self, batch, batch_idx):
        self.log(
            "test/loss", self.fixed_noise_loss(batch[0], batch_idx), batch_size=len(batch[0]), sync_dist=True
        )

    def on_test_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        if not hasattr(dm, "points") or len(dm.input_shape) > 1:  # image data: the loss only
            return
        from divlab.metrics.generative import evaluate_sampler

        metrics = evaluate_sampler(
            lambda z: sample(self.ema, z, method=self.sample_method, num_steps=self.sample_steps),
            reference=dm.points("test"),
            mixture=dm.mixture,
            n=self.eval_samples,
            nfe=sampler_nfe(self.sample_method, self.sample_steps),
            seed=self.seed,
            device=self.device,
            plot_path=self.plot_path("test_samples.png"),
            title=f"EDM {self.sample_method} {self.sample_steps} steps",
        )
        for k, v in metrics.items():
            self.log(f"test/{k}", v)

    def plot_path(self, name: str):
        from pathlib import Path

        if self.run_dir is None or self.global_rank != 0:
            return None
        return Path(self.run_dir) / name

    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)
