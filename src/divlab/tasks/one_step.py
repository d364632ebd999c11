"""One-step diffusion distillation (f-distill, DMD, Diff-Instruct, SiD, Uni-Instruct) with Lightning
manual optimisation; the objectives themselves are in divlab.tasks.fdistill_loss.

Networks (DMD / f-distill setting):
- teacher D_p:      frozen EDM denoiser (cached, trained by task=denoise) or the exact mixture denoiser.
- generator G:      x_g = G(z) = D_G(sigma_max z; sigma_max), an EDMPrecond initialised from the teacher
                    weights, so at step 0 it is the teacher's one-step (Euler, NFE 1) sampler.
- fake score D_q:   EDMPrecond initialised from the teacher, trained by denoising score matching
                    (EDM loss) on detached generator samples: it tracks the score of q_theta,t.
- discriminator:    a head on the frozen teacher's features of x_t (its own feature network when the
                    teacher is analytic), trained with the non-saturating GAN loss (real = data,
                    fake = generator, both noised with the same sigma distribution); logit -> r = p_t/q_t.
- generator EMA:    evaluated, sampled and plotted.

One round = `critic_steps` (K) updates of the critic optimiser (fake score + discriminator, one
optimiser) followed by one generator update; a training step (one data batch) runs one round per
chunk of `one_step.batch_size` samples (so the data batch, part of the teacher's cache hash, can stay
the teacher's). Lightning counts every optimiser
step in `trainer.global_step`, so global_step = (K + 1) x generator steps; the task logs
`train/generator_steps` itself and stops after `one_step.generator_steps` when that is set.

`task=sample_teacher` (build_teacher_sampler) evaluates the teacher's Euler/Heun sampler at a given NFE
with the same metrics (no training): the teacher rows of the onestep tables.

On image data (`image_metrics` in the config, e.g. experiment=onestep/digits) both score samples with
divlab.metrics.image (a cached classifier's Frechet distance, class histogram, k-NN precision/recall)
and draw image grids (samples.png) instead of scatter plots.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.metrics.image import build_image_scorer, evaluate_image_sampler, image_grid, log_figure
from divlab.models.edm import SIGMA_MAX, EDMLoss, EDMPrecond, expand_as, sample, sample_sigma, sampler_nfe
from divlab.tasks.denoise import EMA, build_denoiser
from divlab.tasks.fdistill_loss import (
    RatioNormalizer,
    check_objective,
    density_ratio,
    discriminator_loss,
    gan_generator_loss,
    generator_loss,
)
from divlab.tasks.running_means import RunningMeans

CHECKPOINT_FORMAT = 1
GRID_IMAGES = 100          # images per panel of the samples.png grid (image data)


# ----------------------------------------------------------------------------- building


def set_threads(n) -> None:
    if n:
        torch.set_num_threads(int(n))


def build_diffusion_teacher(cfg: DictConfig, datamodule) -> nn.Module:
    """The frozen teacher denoiser: the exact mixture denoiser (teacher.analytic) or a cached EDM network."""
    from divlab.models.gmm_teacher import GMMTeacher
    from divlab.teacher import provision_teacher

    if cfg.teacher.get("analytic", False):
        mixture = getattr(datamodule, "mixture", None)
        if mixture is None:
            raise ConfigError(f"teacher={cfg.teacher.get('name', 'edm_gmm_exact')} is the exact denoiser of a "
                              f"Gaussian mixture, but data={cfg.data.name} is not one; use teacher=edm_mlp2d")
        return GMMTeacher.from_mixture(mixture).eval().requires_grad_(False)
    if cfg.teacher.get("train", {}).get("task", "classify") != "denoise" and cfg.teacher.checkpoint in (None, "auto"):
        raise ConfigError("teacher.train.task must be denoise for a diffusion teacher; choose teacher=edm_mlp2d")
    return provision_teacher(cfg, build_denoiser(cfg.teacher.model, cfg.data))


def init_from(target: EDMPrecond, source: nn.Module, *, key: str) -> None:
    if not isinstance(source, EDMPrecond):
        return                                    # analytic teacher: nothing to copy
    result = target.load_state_dict(source.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{key} must have the teacher's architecture to be initialised from it; "
                          f"set student.model to match teacher.model")


class Discriminator(nn.Module):
    """logit(x_t, sigma) = head(features(x_t, sigma)); features are the frozen teacher's (no parameters
    here) or an own DenoiserMLP trunk when the teacher has none."""

    def __init__(self, *, feature_dim: int, width: int = 128, own_features: nn.Module | None = None):
        super().__init__()
        self.own_features = own_features
        self.head = nn.Sequential(nn.Linear(feature_dim, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x: Tensor, sigma: Tensor, teacher: nn.Module) -> Tensor:
        feats = (self.own_features.features(x, sigma) if self.own_features is not None
                 else teacher.features(x, sigma))
        return self.head(feats)


def build(cfg: DictConfig, *, datamodule=None) -> OneStepTask:
    """task.builder of task=one_step."""
    from divlab.tasks.distill import build_divergence

    o = cfg.one_step
    set_threads(o.get("torch_threads"))
    objective = check_objective(o.objective)
    divergence = build_divergence(cfg)
    if not hasattr(divergence, "weight"):
        raise ConfigError(f"divergence={cfg.divergence.name} is not an f-divergence (it has no h(r) = r^2 f''(r)); "
                          f"choose e.g. divergence=js")
    for key, low in (("critic_steps", 1), ("gan_weight", 0), ("ratio_lower", 0)):
        if not o[key] >= low:
            raise ConfigError(f"one_step.{key} must be >= {low}, got {o[key]!r}")
    if not o.ratio_upper > o.ratio_lower > 0:
        raise ConfigError("one_step.ratio_upper must exceed one_step.ratio_lower > 0")
    teacher = build_diffusion_teacher(cfg, datamodule)
    generator = build_denoiser(cfg.student.model, cfg.data)
    fake = build_denoiser(cfg.student.model, cfg.data)
    init_from(generator, teacher, key="student.model (generator)")
    init_from(fake, teacher, key="student.model (fake score)")
    if isinstance(teacher, EDMPrecond) and hasattr(teacher.net, "features"):
        disc = Discriminator(feature_dim=teacher.net.width, width=o.disc_width)
    else:
        trunk = build_denoiser(cfg.student.model, cfg.data)
        disc = Discriminator(feature_dim=trunk.net.width, width=o.disc_width, own_features=trunk)
    from divlab.tasks.classify import optimization

    opt = optimization(cfg)
    return OneStepTask(generator=generator, fake_score=fake, discriminator=disc, teacher=teacher,
                       divergence=divergence, objective=objective, critic_steps=o.critic_steps,
                       gan_weight=o.gan_weight, alpha=o.alpha, sim_weight=o.sim_weight,
                       p_mean=o.p_mean, p_std=o.p_std, ratio_lower=o.ratio_lower, ratio_upper=o.ratio_upper,
                       ratio_bins=o.ratio_bins, ratio_ema_rate=o.ratio_ema_rate,
                       generator_lr=o.generator_lr, critic_lr=o.critic_lr, ema_halflife_steps=o.ema_halflife_steps,
                       generator_steps=o.get("generator_steps"), batch_size=o.get("batch_size"), eval_samples=o.eval_samples,
                       teacher_sample_steps=o.teacher_sample_steps, run_dir=cfg.get("run_dir"), seed=opt["seed"],
                       image_scorer=build_image_scorer(cfg, datamodule) if datamodule is not None else None)


# ----------------------------------------------------------------------------- task


class OneStepTask(pl.LightningModule):
    def __init__(self, *,
                 generator: EDMPrecond,         # x_g = generator(sigma_max z; sigma_max)
                 fake_score: EDMPrecond,        # D_q, trained by DSM on detached x_g
                 discriminator: Discriminator,  # logit on teacher features -> r = p/q
                 teacher: nn.Module,            # frozen D_p; held outside the module tree
                 divergence,                    # f-divergence: h = divergence.weight
                 objective: str = "fdistill",   # fdistill | diff_instruct | sid | uni_instruct
                 critic_steps: int = 5,         # K critic updates per generator update
                 gan_weight: float = 0.0,       # weight of the GAN term in the generator loss
                 alpha: float = 1.2,            # SiD alpha (sid, uni_instruct)
                 sim_weight: float = 1.0,       # weight of the SIM term (uni_instruct)
                 p_mean: float = -1.2,          # ln sigma ~ N(p_mean, p_std^2) for all three losses
                 p_std: float = 1.2,
                 ratio_lower: float = 0.1,      # r clipped to [ratio_lower, ratio_upper]
                 ratio_upper: float = 20.0,
                 ratio_bins: int = 10,          # noise-level bins of the ratio normalisation
                 ratio_ema_rate: float = 0.0,   # running mean of r per bin (0: this batch)
                 generator_lr: float = 1e-4,    # Adam, betas (0, 0.99) as DMD2
                 critic_lr: float = 1e-4,
                 ema_halflife_steps: float = 100.0,  # generator EMA, in generator steps
                 generator_steps: int | None = None,  # stop after this many generator updates
                 batch_size: int | None = None, # split each data batch into rounds of this size (None: whole)
                 eval_samples: int = 2048,      # samples scored at test time
                 teacher_sample_steps: int = 18,  # Heun steps of the teacher panel of the scatter plot
                 run_dir: str | None = None,    # figures go here (rank 0)
                 seed: int = 0,                 # per-epoch reseeding
                 image_scorer=None):            # divlab.metrics.image.ImageScorer on image data (None: 2-D metrics)
        super().__init__()
        self.automatic_optimization = False
        self._image_scorer = (image_scorer,)   # a tuple keeps the classifier out of the module tree
        self.generator, self.fake_score, self.discriminator = generator, fake_score, discriminator
        self.generator_ema = EMA(generator, halflife_steps=ema_halflife_steps)
        teacher.eval().requires_grad_(False)
        self._teacher = (teacher,)             # a tuple hides it from nn.Module registration
        self.divergence, self.objective = divergence, objective
        self.critic_steps, self.gan_weight, self.alpha, self.sim_weight = critic_steps, gan_weight, alpha, sim_weight
        self.p_mean, self.p_std = p_mean, p_std
        self.ratio_lower, self.ratio_upper = ratio_lower, ratio_upper
        self.normaliser = RatioNormalizer(num_bins=ratio_bins, ema_rate=ratio_ema_rate,
                                          log_sigma_min=p_mean - 3 * p_std, log_sigma_max=p_mean + 3 * p_std)
        self.dsm = EDMLoss(sigma_data=generator.sigma_data, p_mean=p_mean, p_std=p_std)
        self.generator_lr, self.critic_lr, self.max_generator_steps = generator_lr, critic_lr, generator_steps
        self.batch_size = batch_size
        self.eval_samples, self.teacher_sample_steps, self.run_dir, self.seed = (
            eval_samples, teacher_sample_steps, run_dir, seed)
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.train_means = RunningMeans()   # per-epoch means of training terms, logged at epoch end
        self.best_val, self.best_epoch = math.inf, -1

    # --- helpers -----------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def setup(self, stage: str) -> None:
        # Each manual backward touches only some sub-networks (critic or generator): DDP must look
        # for unused parameters (Lightning calls prepare_for_backward before each manual backward).
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None) if self._trainer is not None else None
        if ddp_kwargs is not None:
            ddp_kwargs["find_unused_parameters"] = True

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def on_test_start(self) -> None:
        self.teacher.to(self.device).eval()
        if self._image_scorer[0] is not None:
            self._image_scorer[0].to(self.device)

    def on_validation_start(self) -> None:
        self.teacher.to(self.device).eval()

    def track(self, name: str, value: Tensor, n: int) -> None:
        self.train_means.update(name, value, n)

    def generate(self, z: Tensor, net: nn.Module | None = None) -> Tensor:
        """x_g = G(sigma_max z; sigma_max)."""
        net = net or self.generator
        return net(SIGMA_MAX * z, torch.full((len(z),), SIGMA_MAX, device=z.device, dtype=z.dtype))

    def noised(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sigma = sample_sigma(len(x), p_mean=self.p_mean, p_std=self.p_std, device=x.device, dtype=x.dtype)
        return x + expand_as(sigma, x) * torch.randn_like(x), sigma

    # --- training ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.seed * 1_000_003 + self.current_epoch * 1_009 + self.global_rank)

    def critic_step(self, real: Tensor, opt) -> None:
        self.toggle_optimizer(opt)
        with torch.no_grad():
            x_g = self.generate(torch.randn_like(real))
        dsm = self.dsm(self.fake_score, x_g).mean()                         # fake score on detached samples
        real_t, sigma_r = self.noised(real)
        fake_t, sigma_f = self.noised(x_g)
        logits_real = self.discriminator(real_t, sigma_r, self.teacher)
        logits_fake = self.discriminator(fake_t, sigma_f, self.teacher)
        disc = discriminator_loss(logits_real, logits_fake)
        opt.zero_grad()
        self.manual_backward(dsm + disc)
        opt.step()
        self.untoggle_optimizer(opt)
        n = len(real)
        self.track("fake_dsm", dsm, n)
        self.track("disc", disc, n)
        self.track("disc_acc", 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean()), n)

    def generator_step(self, batch_size: int, like: Tensor, opt) -> None:
        self.toggle_optimizer(opt)                                          # critic weights: no grads
        x_g = self.generate(torch.randn(batch_size, *like.shape[1:], device=like.device, dtype=like.dtype))
        x_t, sigma = self.noised(x_g)
        through = self.objective in ("sid", "uni_instruct")                 # gradients through D_p, D_q inputs
        with torch.set_grad_enabled(through):
            teacher_x0 = self.teacher(x_t, sigma)
            fake_x0 = self.fake_score(x_t, sigma)
        logits = self.discriminator(x_t, sigma, self.teacher)
        r = density_ratio(logits, lower=self.ratio_lower, upper=self.ratio_upper)
        h = self.normaliser(r, sigma, self.divergence)                      # mean 1; h = divergence.weight
        distill = generator_loss(self.objective, x_g=x_g, teacher_x0=teacher_x0, fake_x0=fake_x0, h=h,
                                 alpha=self.alpha, sim_weight=self.sim_weight)
        gan = gan_generator_loss(logits)
        loss = distill + self.gan_weight * gan if self.gan_weight > 0 else distill
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        self.generator_ema.update(self.generator)
        self.generator_steps += 1
        n = batch_size
        for name, value in (("gen_distill", distill), ("gen_gan", gan), ("ratio", r.mean()),
                            ("h_max", h.max()), ("h_min", h.min())):
            self.track(name, value, n)

    def training_step(self, batch, batch_idx):
        opt_critic, opt_generator = self.optimizers()
        chunks = batch[0].split(self.batch_size) if self.batch_size else (batch[0],)
        for real in chunks:                     # one round (K critic + 1 generator update) per chunk
            if self.max_generator_steps and int(self.generator_steps) >= self.max_generator_steps:
                self.trainer.should_stop = True
                return
            for _ in range(self.critic_steps):
                self.critic_step(real, opt_critic)
            self.generator_step(len(real), real, opt_generator)

    def on_train_epoch_end(self) -> None:
        reduce_sum = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        for name, mean in self.train_means.compute(reduce_sum).items():
            self.log(f"train/{name}", mean)
        self.log("train/generator_steps", self.generator_steps.float())

    def configure_optimizers(self):
        critic = list(self.fake_score.parameters()) + [p for p in self.discriminator.parameters()]
        betas = (0.0, 0.99)                      # DMD2's Adam betas for both players
        return [torch.optim.Adam(critic, lr=self.critic_lr, betas=betas),
                torch.optim.Adam(self.generator.parameters(), lr=self.generator_lr, betas=betas)]

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def ema_samples(self, n: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = self.trainer.datamodule.input_shape
        z = torch.randn(n, *shape, generator=gen).to(self.device)
        return self.generate(z, self.generator_ema.module)

    def validation_step(self, batch, batch_idx):
        pass                                       # scored on the whole validation set at epoch end

    def on_validation_epoch_end(self) -> None:
        from divlab.divergences import get_divergence

        dm = self.trainer.datamodule
        if not hasattr(dm, "points"):
            return
        ref = dm.points("val").to(self.device).flatten(1)                   # images: pixel vectors
        sw = get_divergence("sliced_wasserstein", num_projections=64, seed=0)(ref.double(), self.ema_samples(
            len(ref), 1).flatten(1).double())
        self.log("val/sliced_w", float(sw))
        if not self.trainer.sanity_checking and float(sw) < self.best_val:
            self.best_val, self.best_epoch = float(sw), self.current_epoch
        self.log("best/val/sliced_w", self.best_val)

    def test_step(self, batch, batch_idx):
        pass                                       # the metrics compare sample sets at epoch end

    def on_test_epoch_end(self) -> None:
        from divlab.metrics.generative import evaluate_sampler, scatter_plot

        dm = self.trainer.datamodule
        student, scorer = (lambda z: self.generate(z, self.generator_ema.module)), self._image_scorer[0]
        if scorer is not None:
            metrics = evaluate_image_sampler(student, scorer, n=self.eval_samples, nfe=1, seed=self.seed,
                                             device=self.device)
        else:
            metrics = evaluate_sampler(student, reference=dm.points("test"), mixture=dm.mixture, n=self.eval_samples,
                                       nfe=1, seed=self.seed, device=self.device)
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
        if self.run_dir is not None and self.global_rank == 0:
            gen = torch.Generator().manual_seed(10_000 + self.seed)
            n = GRID_IMAGES if scorer is not None else self.eval_samples
            z = torch.randn(n, *dm.input_shape, generator=gen).to(self.device)
            steps = self.teacher_sample_steps
            panels = {"data (test)": dm.points("test")[:n],
                      f"teacher Heun NFE {sampler_nfe('heun', steps)}": sample(self.teacher, z, method="heun",
                                                                               num_steps=steps).cpu(),
                      "teacher NFE 1": sample(self.teacher, z, method="euler", num_steps=1).cpu(),
                      f"student NFE 1 ({self.objective}, {self.divergence.name})": self.generate(
                          z, self.generator_ema.module).detach().cpu()}
            path = Path(self.run_dir) / "samples.png"
            if scorer is not None:
                image_grid(path, panels)
                log_figure(self.loggers, "samples", path, step=int(self.generator_steps))
            else:
                scatter_plot(path, panels)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["divlab"] = {"format": CHECKPOINT_FORMAT, "kind": "lightning", "task": "one_step",
                                "best_val_sliced_w": self.best_val, "best_epoch": self.best_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("divlab", {})
        self.best_val, self.best_epoch = meta.get("best_val_sliced_w", math.inf), meta.get("best_epoch", -1)


# ----------------------------------------------------------------------------- teacher sampling


def build_teacher_sampler(cfg: DictConfig, *, datamodule=None) -> TeacherSampler:
    """task.builder of task=sample_teacher (task.fit: false): the teacher's sampler at a given NFE."""
    s = cfg.sample
    set_threads(s.get("torch_threads"))
    sampler_nfe(s.method, s.num_steps)
    return TeacherSampler(teacher=build_diffusion_teacher(cfg, datamodule), method=s.method, num_steps=s.num_steps,
                          eval_samples=s.eval_samples, run_dir=cfg.get("run_dir"), seed=cfg.seed,
                          image_scorer=build_image_scorer(cfg, datamodule) if datamodule is not None else None)


class TeacherSampler(pl.LightningModule):
    def __init__(self, *,
                 teacher: nn.Module,       # frozen denoiser
                 method: str,              # euler | heun
                 num_steps: int,           # sampler steps (NFE: euler = steps, heun = 2 steps - 1)
                 eval_samples: int = 2048, # samples scored
                 run_dir: str | None = None,
                 seed: int = 0,
                 image_scorer=None):       # divlab.metrics.image.ImageScorer on image data (None: 2-D metrics)
        super().__init__()
        self._teacher = (teacher.eval().requires_grad_(False),)
        self._image_scorer = (image_scorer,)
        self.method, self.num_steps, self.eval_samples, self.run_dir, self.seed = (
            method, num_steps, eval_samples, run_dir, seed)

    def on_test_start(self) -> None:
        self._teacher[0].to(self.device)
        if self._image_scorer[0] is not None:
            self._image_scorer[0].to(self.device)

    def test_step(self, batch, batch_idx):
        pass

    def on_test_epoch_end(self) -> None:
        from divlab.metrics.generative import evaluate_sampler

        dm = self.trainer.datamodule
        nfe = sampler_nfe(self.method, self.num_steps)
        plot = Path(self.run_dir) / "samples.png" if self.run_dir is not None and self.global_rank == 0 else None
        teacher = lambda z: sample(self._teacher[0], z, method=self.method, num_steps=self.num_steps)  # noqa: E731
        title = f"teacher, {self.method} NFE {nfe}"
        if self._image_scorer[0] is not None:
            metrics = evaluate_image_sampler(teacher, self._image_scorer[0], n=self.eval_samples, nfe=nfe,
                                             seed=self.seed, device=self.device, plot_path=plot, title=title)
            if plot is not None:
                log_figure(self.loggers, "samples", plot)
        else:
            metrics = evaluate_sampler(teacher, reference=dm.points("test"), mixture=dm.mixture, n=self.eval_samples,
                                       nfe=nfe, seed=self.seed, device=self.device, plot_path=plot, title=title)
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
