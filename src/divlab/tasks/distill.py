"""Knowledge distillation from a frozen teacher with any divergence of the library.

    loss = ce_weight * CE(student, y) + kd_weight * [T^2] * D(softmax(t/T) || softmax(s/T))

(Hinton, Vinyals & Dean 2015, eq. 2 and the T^2 remark under it; D = forward_kl gives Hinton KD.)
Losses that apply a temperature of their own (hinton_kd, dkd, ofa, sinkd: `divergence.temperature`)
get the raw logits and no T^2 factor from the task, so nothing is scaled twice.
The teacher is held outside the module tree: it is never in the optimiser, never in the
student's checkpoint, always in eval mode and run under no_grad.

Three additions, each off by default:
- stage heads (`distill.stages`, OFA-KD, Hao et al. 2023, Sec. 3.2 and eq. 9): a projector on each
  named intermediate feature of the student maps it to logits, and each adds
  stage_weight_k * D(teacher || head_k(feature_k)) with the same divergence as the final logits.
  The heads are part of the student (optimiser, checkpoint); `auto` picks every stage but the last.
- warm-up (`distill.warmup_epochs` = w): the distillation terms are multiplied by min((epoch + 1) / w, 1)
  with epochs counted from 0 (mdistiller's min(epoch / warmup, 1) with epochs from 1; DKD uses w = 20).
- teacher-logit cache (`distill.cache_teacher_logits`, see tasks/teacher_logits.py).
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from divlab.errors import ConfigError
from divlab.models.features import FeatureTaps, build_stage_heads, default_stages, head_key
from divlab.tasks.classify import ClassifyTask, optimization
from divlab.utils.checks import build as build_spec
from divlab.utils.checks import check_models_agree


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
    from divlab.tasks.teacher_logits import cache_enabled, cached_logits, index_training_split
    from divlab.teacher import provision_teacher

    student = build_spec(cfg.student.model)
    divergence = build_divergence(cfg)
    if hasattr(divergence, "temperature"):
        say(f"divergence={cfg.divergence.name} applies its own temperature (divergence.temperature="
            f"{divergence.temperature}); distill.temperature and distill.t_squared are not used")
    d = cfg.distill
    warmup = d.get("warmup_epochs", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"distill.warmup_epochs must be an integer >= 0, got {warmup!r}")
    stages, weights = stage_settings(d, student)
    heads = build_stage_heads(student, stages, input_shape=tuple(cfg.data.input_shape)) if stages else None
    teacher = build_spec(cfg.teacher.model)
    check_models_agree(data_classes=cfg.data.num_classes, student=student, teacher=teacher)
    teacher = provision_teacher(cfg, teacher)
    if stages:
        say(f"stage heads on {', '.join(stages)} (weights {', '.join(f'{w:g}' for w in weights)})")
    elif d.get("stages") == "auto":
        say(f"distill.stages=auto: {type(student).__name__} has no stage before its last one; "
            f"no stage heads, the divergence acts on the final logits only")
    cached = None
    if datamodule is not None and cache_enabled(cfg, datamodule):
        logits, path, hit = cached_logits(cfg, teacher, index_training_split(datamodule))
        say(f"teacher logits {'read from' if hit else 'computed once and cached in'} {path}")
        cached = logits
    return DistillTask(model=student, teacher=teacher, divergence=divergence, temperature=d.temperature,
                       ce_weight=d.ce_weight, kd_weight=d.kd_weight, t_squared=d.t_squared,
                       stage_heads=heads, stage_names=stages, stage_weights=weights,
                       warmup_epochs=warmup, teacher_logits=cached, **optimization(cfg))


def stage_settings(d: DictConfig, student: nn.Module) -> tuple[list[str], list[float]]:
    """(feature names, loss weights) of the stage heads from distill.stages / distill.stage_weights."""
    from omegaconf import ListConfig

    stages = d.get("stages") or []
    if stages == "auto":
        stages = list(default_stages(student))
    elif not isinstance(stages, (list, ListConfig)) or not all(isinstance(n, str) for n in stages):
        raise ConfigError(f"distill.stages must be auto or a list of module names of the student, got {stages!r}")
    stages = list(stages)
    weights = d.get("stage_weights")
    if weights is None:
        weights = [1.0] * len(stages)
    elif isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [float(weights)] * len(stages)
    weights = [float(w) for w in weights]
    if len(weights) != len(stages) or any(w < 0 for w in weights):
        raise ConfigError(f"distill.stage_weights must be one number >= 0 per stage of distill.stages "
                          f"({len(stages)}: {stages}), got {list(weights)}")
    return stages, weights


class DistillTask(ClassifyTask):
    def __init__(self, *,
                 model: nn.Module,          # the student
                 teacher: nn.Module,        # frozen; held outside the module tree
                 divergence,                # callable (target_logits, model_logits) -> per-row D(P||Q)
                 temperature: float = 4.0,  # T > 0
                 ce_weight: float = 1.0,    # weight of CE to the labels
                 kd_weight: float = 1.0,    # weight of the divergence term
                 t_squared: bool = True,    # multiply the divergence by T^2
                 stage_heads: nn.ModuleDict | None = None,  # projectors feature -> logits (build_stage_heads)
                 stage_names: list[str] = (),               # the student modules they read, one per head
                 stage_weights: list[float] = (),           # loss weight of each head
                 warmup_epochs: int = 0,    # distillation terms ramp as min((epoch + 1) / w, 1); 0: none
                 teacher_logits: torch.Tensor | None = None,  # (N, K) cache; batches then end in indices
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
        self.stage_heads = stage_heads      # registered: trained with the student, saved in its checkpoint
        self.stage_names, self.stage_weights = tuple(stage_names), tuple(stage_weights)
        if (stage_heads is not None or self.stage_names) and (
                stage_heads is None or [head_key(n) for n in self.stage_names] != list(stage_heads.keys())
                or len(self.stage_weights) != len(self.stage_names)):
            raise ValueError("stage_heads, stage_names and stage_weights must match one to one")
        self._taps = None                   # forward hooks, attached at the first training step
        self.warmup_epochs = warmup_epochs
        self._teacher_logits = (teacher_logits,)   # hidden: not a buffer, never in the checkpoint

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()
        if self._teacher_logits[0] is not None:
            self._teacher_logits = (self._teacher_logits[0].to(self.device),)

    def warmup_factor(self) -> float:
        """min((epoch + 1) / warmup_epochs, 1): 1/w in the first epoch, 1 from epoch w - 1 (0-based) on."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min((self.current_epoch + 1) / self.warmup_epochs, 1.0)

    def student_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Student logits and, with stage heads, the tapped stage features."""
        if not self.stage_names:
            return self.model(x), {}
        if self._taps is None:              # not at init: hooks would stop the task pickling (ddp_spawn)
            self._taps = FeatureTaps(self.model, self.stage_names)
        return self._taps(x)

    def teacher_forward(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        cache = self._teacher_logits[0]
        if cache is not None:
            if index is None:
                raise RuntimeError("the teacher-logit cache needs batches (x, y, index); the training split "
                                   "was not wrapped by teacher_logits.index_training_split")
            return cache[index]
        with torch.no_grad():
            return self.teacher(x)

    def training_step(self, batch, batch_idx):
        x, y, *rest = batch
        teacher_logits = self.teacher_forward(x, rest[0] if rest else None)
        logits, feats = self.student_forward(x)
        ce = F.cross_entropy(logits, y)
        extra = {"labels": y} if self.divergence_needs_labels else {}
        t = teacher_logits / self.temperature

        def divergence(student_logits):
            return self.divergence(t, student_logits / self.temperature, **extra).mean()

        kd = divergence(logits)
        terms = {"ce": ce, "kd": kd}
        distill = self.kd_weight * kd
        for name, weight in zip(self.stage_names, self.stage_weights):
            key = head_key(name)
            terms[f"stage_{key}"] = term = divergence(self.stage_heads[key](feats[name]))
            distill = distill + weight * term
        distill = self.kd_scale * distill
        loss = self.ce_weight * ce + self.warmup_factor() * distill
        for name, value in (*terms.items(), ("loss", loss)):
            self.track(name, value, len(y))
        return loss
