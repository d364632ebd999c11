"""One-step diffusion distillation (f-distill, DMD, Diff-Instruct, SiD, Uni-Instruct) with Lightning
manual optimisation; the objectives themselves are in divlab.objectives.fdistill.

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

Real data: training batches (images, labels) always come from the data module's train loader; the validation
and test references are its in-memory `points(split)` when it has them (2-D mixtures, digits, CIFAR) and
otherwise the first `eval_samples` images of its val/test loaders (data=image_folder: ImageNet 64x64).

On image data both draw image grids (samples.png) instead of scatter plots; with `image_metrics` in the
config (e.g. experiment=onestep/digits) they score samples with divlab.metrics.image (a cached classifier's
Frechet distance, class histogram, k-NN precision/recall), without it (the paper-scale recipes, whose FID is
task=evaluate's) with the sample metrics on pixel vectors (divlab.tasks.one_step_eval).

Class-conditional networks (a `label_dim` > 0, e.g. EDM's ImageNet-64 teacher): every network call carries
class labels. Generator samples get classes drawn uniformly (DMD2's class-conditional setting), the same labels
go to the fake score, the teacher and the discriminator's teacher features at those samples; noised data gets
its own labels in the discriminator. Unconditional networks are called without labels.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.metrics.image import build_image_scorer
from divlab.models.discriminator import Discriminator
from divlab.models.edm import SIGMA_MAX, EDMLoss, EDMPrecond, expand_as, sample_sigma
from divlab.objectives.fdistill import (
    REDUCTIONS,
    UNI_FORMS,
    RatioNormalizer,
    check_choice,
    check_objective,
    density_ratio,
    discriminator_loss,
    gan_generator_loss,
    generator_loss,
)
from divlab.tasks.base import DivlabTask
from divlab.tasks.denoise import EMA, build_denoiser
from divlab.tasks.one_step_eval import OneStepEvaluation
from divlab.tasks.sample_teacher import build_diffusion_teacher, build_teacher_sampler, set_threads

__all__ = ["OneStepTask", "build", "build_teacher_sampler"]  # conf/task/sample_teacher.yaml names it here


# ----------------------------------------------------------------------------- building


def init_from(target: EDMPrecond, source: nn.Module, *, key: str) -> None:
    if not isinstance(source, EDMPrecond):
        return  # analytic teacher: nothing to copy
    result = target.load_state_dict(source.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{key} must have the teacher's architecture to be initialised from it; "
            f"set student.model to match teacher.model"
        )


def build(cfg: DictConfig, *, datamodule=None) -> OneStepTask:
    """task.builder of task=one_step."""
    from divlab.tasks.distill import build_divergence

    o = cfg.one_step
    set_threads(o.get("torch_threads"))
    strategy = str(cfg.trainer.get("strategy") or "auto")
    if strategy.startswith("ddp") and not strategy.endswith("find_unused_parameters_true"):
        # each manual backward reaches only the critic's or only the generator's parameters
        raise ConfigError(
            f"task=one_step updates part of its networks per backward, which DDP must be told; set "
            f"trainer.strategy={strategy.split('_find')[0]}_find_unused_parameters_true"
        )
    objective = check_objective(o.objective)
    reduction = check_choice("reduction", o.reduction, REDUCTIONS)
    uni_form = check_choice("uni_instruct_form", o.uni_instruct_form, UNI_FORMS)
    divergence = build_divergence(cfg)
    if not hasattr(divergence, "weight"):
        raise ConfigError(
            f"divergence={cfg.divergence.name} is not an f-divergence (it has no h(r) = r^2 f''(r)); "
            f"choose e.g. divergence=js"
        )
    for key, low in (("critic_steps", 1), ("gan_weight", 0), ("ratio_lower", 0)):
        if not o[key] >= low:
            raise ConfigError(f"one_step.{key} must be >= {low}, got {o[key]!r}")
    if not o.ratio_upper > o.ratio_lower > 0:
        raise ConfigError("one_step.ratio_upper must exceed one_step.ratio_lower > 0")
    if datamodule is not None and not hasattr(datamodule, "points"):  # real images come from its loaders
        if len(getattr(datamodule, "input_shape", ())) != 3:
            raise ConfigError(
                f"task=one_step trains on points or images, which data={cfg.data.name} does not give "
                f"(no points() and no (C, H, W) input_shape); choose e.g. data=cifar10 or data=image_folder"
            )
        if cfg.get("image_metrics") not in (None, "pixels"):
            raise ConfigError(
                f"image_metrics with a classifier needs the test split in memory, which data={cfg.data.name} "
                f"cannot give (no points()); set image_metrics=pixels"
            )
    scorer = build_image_scorer(cfg, datamodule) if datamodule is not None else None
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
    return OneStepTask(
        generator=generator,
        fake_score=fake,
        discriminator=disc,
        teacher=teacher,
        divergence=divergence,
        objective=objective,
        critic_steps=o.critic_steps,
        gan_weight=o.gan_weight,
        alpha=o.alpha,
        sim_weight=o.sim_weight,
        di_weight=o.di_weight,
        reduction=reduction,
        uni_instruct_form=uni_form,
        p_mean=o.p_mean,
        p_std=o.p_std,
        ratio_lower=o.ratio_lower,
        ratio_upper=o.ratio_upper,
        ratio_bins=o.ratio_bins,
        ratio_ema_rate=o.ratio_ema_rate,
        generator_lr=o.generator_lr,
        critic_lr=o.critic_lr,
        ema_halflife_steps=o.ema_halflife_steps,
        generator_steps=o.get("generator_steps"),
        batch_size=o.get("batch_size"),
        eval_samples=o.eval_samples,
        teacher_sample_steps=o.teacher_sample_steps,
        run_dir=cfg.get("run_dir"),
        seed=opt["seed"],
        image_scorer=scorer,
    )


# ----------------------------------------------------------------------------- task


class OneStepTask(OneStepEvaluation, DivlabTask):
    def __init__(
        self,
        *,
        generator: EDMPrecond,  # x_g = generator(sigma_max z; sigma_max)
        fake_score: EDMPrecond,  # D_q, trained by DSM on detached x_g
        discriminator: Discriminator,  # logit on teacher features -> r = p/q
        teacher: nn.Module,  # frozen D_p; held outside the module tree
        divergence,  # f-divergence: h = divergence.weight
        objective: str = "fdistill",  # fdistill | diff_instruct | sid | uni_instruct
        critic_steps: int = 5,  # K critic updates per generator update
        gan_weight: float = 1e-3,  # weight of the GAN term in the generator loss (FastGen: 1e-3)
        alpha: float = 1.2,  # SiD alpha (sid, uni_instruct)
        sim_weight: float = 1.0,  # lambda_SIM, weight of the SIM term (uni_instruct)
        di_weight: float = 1.0,  # lambda_DI, weight of the DI term (uni_instruct)
        reduction: str = "mean",  # over data dims: mean (FastGen) | sum
        uni_instruct_form: str = "paper",  # paper (scalar weights) | h_weighted
        p_mean: float = -1.2,  # ln sigma ~ N(p_mean, p_std^2) for all three losses
        p_std: float = 1.2,
        ratio_lower: float = 0.1,  # r clipped to [ratio_lower, ratio_upper]
        ratio_upper: float = 20.0,
        ratio_bins: int = 10,  # noise-level bins of the ratio normalisation
        ratio_ema_rate: float = 0.0,  # running mean of r per bin (0: this batch)
        generator_lr: float = 1e-4,  # Adam, betas (0, 0.99) as DMD2
        critic_lr: float = 1e-4,
        ema_halflife_steps: float = 100.0,  # generator EMA, in generator steps
        generator_steps: int | None = None,  # stop after this many generator updates
        batch_size: int | None = None,  # split each data batch into rounds of this size (None: whole)
        eval_samples: int = 2048,  # samples scored at test time
        teacher_sample_steps: int = 18,  # Heun steps of the teacher panel of the scatter plot
        run_dir: str | None = None,  # figures go here (rank 0)
        seed: int = 0,  # per-epoch reseeding
        image_scorer=None,
    ):  # divlab.metrics.image.ImageScorer on image data (None: 2-D metrics)
        super().__init__(seed=seed, task_name="one_step", best_metric="val/sliced_w", best_mode="min")
        self.automatic_optimization = False
        self.hold_frozen("image_scorer", image_scorer)  # outside the module tree
        self.generator, self.fake_score, self.discriminator = generator, fake_score, discriminator
        self.generator_ema = EMA(generator, halflife_steps=ema_halflife_steps)
        self.hold_frozen("teacher", teacher)
        self.divergence, self.objective = divergence, objective
        self.critic_steps, self.gan_weight, self.alpha, self.sim_weight = (
            critic_steps,
            gan_weight,
            alpha,
            sim_weight,
        )
        self.di_weight, self.reduction, self.uni_instruct_form = di_weight, reduction, uni_instruct_form
        self.p_mean, self.p_std = p_mean, p_std
        self.ratio_lower, self.ratio_upper = ratio_lower, ratio_upper
        self.normaliser = RatioNormalizer(
            num_bins=ratio_bins,
            ema_rate=ratio_ema_rate,
            log_sigma_min=p_mean - 3 * p_std,
            log_sigma_max=p_mean + 3 * p_std,
        )
        self.dsm = EDMLoss(sigma_data=generator.sigma_data, p_mean=p_mean, p_std=p_std)
        self.generator_lr, self.critic_lr, self.max_generator_steps = generator_lr, critic_lr, generator_steps
        self.batch_size = batch_size
        self.eval_samples, self.teacher_sample_steps, self.run_dir = (
            eval_samples,
            teacher_sample_steps,
            run_dir,
        )
        self.label_dim = int(getattr(generator.net, "label_dim", 0) or 0)  # classes; 0 = unconditional
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))

    # --- helpers -----------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self.frozen("teacher")

    @staticmethod
    def denoise(net: nn.Module, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """net(x; sigma), with class labels for a class-conditional network."""
        return net(x, sigma) if labels is None else net(x, sigma, labels)

    def random_labels(self, n: int, device) -> Tensor | None:
        """Uniform classes of n generator samples (None when unconditional)."""
        return torch.randint(self.label_dim, (n,), device=device) if self.label_dim else None

    def generate(self, z: Tensor, net: nn.Module | None = None, labels: Tensor | None = None) -> Tensor:
        """x_g = G(sigma_max z; sigma_max) (given classes when conditional)."""
        sigma = torch.full((len(z),), SIGMA_MAX, device=z.device, dtype=z.dtype)
        return self.denoise(net or self.generator, SIGMA_MAX * z, sigma, labels)

    def noised(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sigma = sample_sigma(len(x), p_mean=self.p_mean, p_std=self.p_std, device=x.device, dtype=x.dtype)
        return x + expand_as(sigma, x) * torch.randn_like(x), sigma

    # --- training ----------------------------------------------------------------------------
    def critic_step(self, real: Tensor, real_labels: Tensor | None, opt) -> None:
        self.toggle_optimizer(opt)
        labels = self.random_labels(len(real), real.device)
        with torch.no_grad():
            x_g = self.generate(torch.randn_like(real), labels=labels)
        fake_score = lambda x, sigma: self.denoise(self.fake_score, x, sigma, labels)  # noqa: E731
        dsm = self.dsm(fake_score, x_g).mean()  # fake score on detached samples
        real_t, sigma_r = self.noised(real)
        fake_t, sigma_f = self.noised(x_g)
        logits_real = self.discriminator(real_t, sigma_r, self.teacher, real_labels)
        logits_fake = self.discriminator(fake_t, sigma_f, self.teacher, labels)
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
        self.toggle_optimizer(opt)  # critic weights: no grads
        labels = self.random_labels(batch_size, like.device)
        z = torch.randn(batch_size, *like.shape[1:], device=like.device, dtype=like.dtype)
        x_g = self.generate(z, labels=labels)
        x_t, sigma = self.noised(x_g)
        through = self.objective in ("sid", "uni_instruct")  # gradients through D_p, D_q inputs
        with torch.set_grad_enabled(through):
            teacher_x0 = self.denoise(self.teacher, x_t, sigma, labels)
            fake_x0 = self.denoise(self.fake_score, x_t, sigma, labels)
        logits = self.discriminator(x_t, sigma, self.teacher, labels)
        r = density_ratio(logits, lower=self.ratio_lower, upper=self.ratio_upper)
        h = self.normaliser(r, sigma, self.divergence)  # mean 1; h = divergence.weight
        distill = generator_loss(
            self.objective,
            x_g=x_g,
            teacher_x0=teacher_x0,
            fake_x0=fake_x0,
            h=h,
            alpha=self.alpha,
            sim_weight=self.sim_weight,
            di_weight=self.di_weight,
            reduction=self.reduction,
            uni_instruct_form=self.uni_instruct_form,
        )
        gan = gan_generator_loss(logits)
        loss = distill + self.gan_weight * gan if self.gan_weight > 0 else distill
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        self.generator_ema.update(self.generator)
        self.generator_steps += 1
        n = batch_size
        for name, value in (
            ("gen_distill", distill),
            ("gen_gan", gan),
            ("ratio", r.mean()),
            ("h_max", h.max()),
            ("h_min", h.min()),
        ):
            self.track(name, value, n)

    def training_step(self, batch, batch_idx):
        opt_critic, opt_generator = self.optimizers()
        size = self.batch_size or len(batch[0])
        labels = batch[1].split(size) if self.label_dim else [None] * len(batch[0].split(size))
        for real, real_labels in zip(batch[0].split(size), labels):  # a round: K critic + 1 generator update
            if self.max_generator_steps and int(self.generator_steps) >= self.max_generator_steps:
                self.trainer.should_stop = True
                return
            for _ in range(self.critic_steps):
                self.critic_step(real, real_labels, opt_critic)
            self.generator_step(len(real), real, opt_generator)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("train/generator_steps", self.generator_steps.float())

    def configure_optimizers(self):
        critic = list(self.fake_score.parameters()) + [p for p in self.discriminator.parameters()]
        betas = (0.0, 0.99)  # DMD2's Adam betas for both players
        return [
            torch.optim.Adam(critic, lr=self.critic_lr, betas=betas),
            torch.optim.Adam(self.generator.parameters(), lr=self.generator_lr, betas=betas),
        ]
