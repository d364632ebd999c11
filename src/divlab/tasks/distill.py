"""Knowledge distillation from a frozen teacher with any divergence of the library.

    loss = ce_weight * CE(student, y) + kd_weight * [T^2] * D(softmax(t/T) || softmax(s/T))

(Hinton, Vinyals & Dean 2015, eq. 2 and the T^2 remark under it; D = forward_kl gives Hinton KD.)
Losses that apply a temperature of their own (hinton_kd, dkd, ofa, sinkd: `divergence.temperature`)
get the raw logits and no T^2 factor from the task, so nothing is scaled twice.
The teacher is held outside the module tree: it is never in the optimiser, never in the
student's checkpoint, always in eval mode and run under no_grad.
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from divlab.errors import ConfigError
from divlab.tasks.classify import ClassifyTask, optimization
from divlab.utils.checks import build as build_spec, check_models_agree


def build_divergence(cfg: DictConfig):
    """The divergence of a distill run; bad settings and sample-set divergences fail in one sentence."""
    try:
        divergence = build_spec(cfg.divergence)
    except ConfigError as e:
        raise ConfigError(f"bad divergence.* setting: {e}") from None
    if getattr(divergence, "kind", "categorical") == "samples":
        raise ConfigError(f"divergence={cfg.divergence.name} compares sets of samples, but the distill task "
                          f"needs a divergence between teacher and student class distributions; "
                          f"choose e.g. divergence=forward_kl")
    return divergence


def build(cfg: DictConfig, *, datamodule=None) -> "DistillTask":
    """task.builder of task=distill: student, divergence, and the frozen teacher (loaded, or trained
    once and cached; see divlab.teacher)."""
    from divlab.runner import say
    from divlab.teacher import provision_teacher

    student = build_spec(cfg.student.model)
    divergence = build_divergence(cfg)
    if hasattr(divergence, "temperature"):
        say(f"divergence={cfg.divergence.name} applies its own temperature (divergence.temperature="
            f"{divergence.temperature}); distill.temperature and distill.t_squared are not used")
    teacher = build_spec(cfg.teacher.model)
    check_models_agree(data_classes=cfg.data.num_classes, student=student, teacher=teacher)
    teacher = provision_teacher(cfg, teacher)
    d = cfg.distill
    return DistillTask(model=student, teacher=teacher, divergence=divergence, temperature=d.temperature,
                       ce_weight=d.ce_weight, kd_weight=d.kd_weight, t_squared=d.t_squared,
                       **optimization(cfg))


class DistillTask(ClassifyTask):
    def __init__(self, *,
                 model: nn.Module,          # the student
                 teacher: nn.Module,        # frozen; held outside the module tree
                 divergence,                # callable (target_logits, model_logits) -> per-row D(P||Q)
                 temperature: float = 4.0,  # T > 0
                 ce_weight: float = 1.0,    # weight of CE to the labels
                 kd_weight: float = 1.0,    # weight of the divergence term
                 t_squared: bool = True,    # multiply the divergence by T^2
                 **classify_kwargs):        # optimizer, scheduler, seed (see ClassifyTask)
        super().__init__(model=model, task_name="distill", **classify_kwargs)
        teacher.eval().requires_grad_(False)
        self._teacher = (teacher,)          # a tuple hides it from nn.Module registration
        self.divergence = divergence
        self.divergence_needs_labels = getattr(divergence, "needs_labels", False)   # dkd, pld, ofa
        own_temperature = hasattr(divergence, "temperature")
        self.temperature = 1.0 if own_temperature else temperature
        self.kd_scale = temperature**2 if t_squared and not own_temperature else 1.0
        self.ce_weight, self.kd_weight = ce_weight, kd_weight

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        extra = {"labels": y} if self.divergence_needs_labels else {}
        kd = self.divergence(teacher_logits / self.temperature, logits / self.temperature, **extra).mean()
        loss = self.ce_weight * ce + self.kd_weight * self.kd_scale * kd
        for name, value in (("ce", ce), ("kd", kd), ("loss", loss)):
            self.track(name, value, len(y))
        return loss
