"""Knowledge distillation from a frozen teacher with any divergence of the library, or a weighted sum of them.

    loss = ce_weight * CE(student, y) + sum_i w_i * [T_i^2] * D_i(softmax(t/T_i) || softmax(s/T_i))

(Hinton, Vinyals & Dean 2015, eq. 2 and the T^2 remark under it; D = forward_kl gives Hinton KD.)
By default there is one term: `divergence=<name>` with weight `distill.kd_weight`, temperature
`distill.temperature` and `distill.t_squared`. `distill.terms` replaces it by a list of terms, each
`{divergence: <name or spec>, weight: w, temperature: T, t_squared: bool}` (the last two default to
distill.temperature / distill.t_squared); SinKD's total (1 - a) CE + a KD + b Sinkhorn is
`ce_weight: 0.1` with terms forward_kl (weight 0.9) and sinkd (weight 0.8), conf/experiment/kd/digits_sinkd.yaml.

A divergence that owns its temperature (class attribute `owns_temperature`: hinton_kd, dkd, ofa, pld,
sinkd) gets the raw logits and no T^2 from the task, so nothing is scaled twice; every other one gets
t/T and s/T and T^2 when t_squared. The teacher is held outside the module tree (DivlabTask.hold_frozen):
never in the optimiser, never in the student's checkpoint, always in eval mode and run under no_grad.

Three additions, each off by default:
- stage heads (`distill.stages`, OFA-KD, Hao et al. 2023, Sec. 3.2 and eq. 9): a projector on each
  named intermediate feature of the student maps it to logits, and each adds
  stage_weight_k * sum_i [T_i^2] D_i(teacher || head_k(feature_k)) with the terms of the final logits
  (their weights w_i act on the final logits only). The heads are part of the student (optimiser,
  checkpoint); `auto` picks every stage but the last.
- warm-up (`distill.warmup_epochs` = w): the distillation terms are multiplied by min((epoch + 1) / w, 1)
  with epochs counted from 0 (mdistiller's min(epoch / warmup, 1) with epochs from 1; DKD uses w = 20).
- teacher-logit cache (`distill.cache_teacher_logits`, see tasks/teacher_logits.py).

Logged terms: `ce`; with one term `kd` (the divergence's mean at its temperature, before weight and T^2)
and `stage_<name>`; with several, `kd_<divergence name>` per term as above and `kd` = the weighted sum.
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig
from torch import nn

from divlab.errors import ConfigError
from divlab.models.features import FeatureTaps, build_stage_heads, default_stages, head_key
from divlab.tasks.classify import ClassifyTask, optimization
from divlab.utils.checks import build as build_spec
from divlab.utils.checks import check_models_agree, check_takes_inputs

TERM_KEYS = ("divergence", "weight", "temperature", "t_squared")


class KDTerm(nn.Module):
    """One distillation term: D(t/T || s/T) scaled by T^2 (when t_squared), or D(t || s) on the raw
    logits when D owns its temperature; the task multiplies it by `weight`."""

    def __init__(
        self,
        *,
        divergence,  # per-position (or batch) divergence of the library, P = teacher
        weight: float = 1.0,  # w >= 0, the term's weight in the loss
        temperature: float = 4.0,  # T > 0, unused when the divergence owns its temperature
        t_squared: bool = True,
    ):  # multiply by T^2 (Hinton), unused when it owns its temperature
        super().__init__()
        owns = getattr(divergence, "owns_temperature", None)
        if owns is None:
            raise ConfigError(
                f"divergence {getattr(divergence, 'name', divergence)!r} does not say whether it "
                f"applies its own temperature; give its class an owns_temperature attribute"
            )
        self.divergence = divergence
        self.name = str(getattr(divergence, "name", type(divergence).__name__))
        self.weight = float(weight)
        self.owns_temperature = bool(owns)
        self.temperature = 1.0 if self.owns_temperature else float(temperature)
        self.scale = float(temperature) ** 2 if t_squared and not self.owns_temperature else 1.0
        self.needs_labels = bool(getattr(divergence, "needs_labels", False))

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor):
        """Mean of D over the batch at the term's temperature, before `scale` and `weight`."""
        extra = {"labels": labels} if self.needs_labels else {}
        t = self.temperature
        return self.divergence(teacher_logits / t, student_logits / t, **extra).mean()


def check_divergence_kind(divergence, key: str):
    if getattr(divergence, "kind", "categorical") == "samples":
        raise ConfigError(
            f"{key}={getattr(divergence, 'name', divergence)} compares sets of samples, but the "
            f"distill task needs a divergence between teacher and student class distributions; "
            f"choose e.g. forward_kl"
        )
    return divergence


def build_divergence(cfg: DictConfig):
    """The divergence of a distill run; bad settings and sample-set divergences fail in one sentence."""
    try:
        divergence = build_spec(cfg.divergence)
    except ConfigError as e:
        raise ConfigError(f"bad divergence.* setting: {e}") from None
    return check_divergence_kind(divergence, "divergence")


def term_divergence(spec, key: str):
    """A term's divergence from a registered name, {name: ..., <params>}, or a spec with _target_."""
    from divlab.divergences import get_divergence

    try:
        if isinstance(spec, str):
            divergence = get_divergence(spec)
        elif isinstance(spec, (dict, DictConfig)) and "_target_" in spec:
            divergence = build_spec(spec)
        elif isinstance(spec, (dict, DictConfig)) and "name" in spec:
            params = {k: v for k, v in spec.items() if k != "name"}
            divergence = get_divergence(spec["name"], **params)
        else:
            raise ConfigError(
                f"it must be a divergence name or a mapping with name: (or _target_:), got {spec!r}"
            )
    except ConfigError as e:
        raise ConfigError(f"bad {key}: {e}") from None
    return check_divergence_kind(divergence, key)


def _number(value, key: str, *, low: float, strict: bool) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value > low if strict else value >= low)
    )
    if not ok:
        raise ConfigError(f"{key} must be a number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def build_terms(d: DictConfig, cfg: DictConfig) -> list[KDTerm]:
    """The distillation terms of a run: distill.terms, or the one term divergence= with distill.kd_weight."""
    raw = d.get("terms")
    if not raw:
        return [
            KDTerm(
                divergence=build_divergence(cfg),
                weight=d.kd_weight,
                temperature=d.temperature,
                t_squared=d.t_squared,
            )
        ]
    if not isinstance(raw, (list, ListConfig)):
        raise ConfigError(
            f"distill.terms must be a list of {{divergence: <name or spec>, weight: w}} mappings, got {raw!r}"
        )
    terms = []
    for i, entry in enumerate(raw):
        key = f"distill.terms[{i}]"
        if not isinstance(entry, (dict, DictConfig)) or "divergence" not in entry:
            raise ConfigError(
                f"{key} must be a mapping with a divergence: key (a name or a spec), got {entry!r}"
            )
        unknown = sorted(set(entry) - set(TERM_KEYS))
        if unknown:
            raise ConfigError(
                f"{key} has unknown key(s) {', '.join(unknown)}; it accepts: {', '.join(TERM_KEYS)}"
            )
        t_squared = entry.get("t_squared", d.t_squared)
        if not isinstance(t_squared, bool):
            raise ConfigError(f"{key}.t_squared must be true or false, got {t_squared!r}")
        terms.append(
            KDTerm(
                divergence=term_divergence(entry["divergence"], f"{key}.divergence"),
                weight=_number(entry.get("weight", 1.0), f"{key}.weight", low=0, strict=False),
                temperature=_number(
                    entry.get("temperature", d.temperature), f"{key}.temperature", low=0, strict=True
                ),
                t_squared=t_squared,
            )
        )
    return terms


def build(cfg: DictConfig, *, datamodule=None) -> "DistillTask":
    """task.builder of task=distill: student, distillation terms, and the frozen teacher (loaded, or
    trained once and cached; see divlab.teacher)."""
    from divlab.provision.teacher import provision_teacher
    from divlab.tasks.teacher_logits import cache_enabled, cached_logits, index_training_split
    from divlab.utils.console import say

    student = build_spec(cfg.student.model)
    d = cfg.distill
    terms = build_terms(d, cfg)
    if d.get("terms"):
        say(
            f"distill.terms: {' + '.join(f'{t.weight:g} x {t.name}' for t in terms)}; divergence= and "
            f"distill.kd_weight are not used"
        )
    for term in terms:
        if term.owns_temperature:
            say(
                f"divergence {term.name} applies its own temperature; the task passes it the raw logits "
                f"(no distill.temperature, no T^2)"
            )
    warmup = d.get("warmup_epochs", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"distill.warmup_epochs must be an integer >= 0, got {warmup!r}")
    stages, weights = stage_settings(d, student)
    heads = build_stage_heads(student, stages, input_shape=tuple(cfg.data.input_shape)) if stages else None
    teacher = build_spec(cfg.teacher.model)
    check_models_agree(data_classes=cfg.data.num_classes, student=student, teacher=teacher)
    check_takes_inputs(student, key="student.model", data=cfg.data)
    check_takes_inputs(teacher, key="teacher.model", data=cfg.data)  # before a teacher is trained or loaded
    teacher = provision_teacher(cfg, teacher)
    if stages:
        say(f"stage heads on {', '.join(stages)} (weights {', '.join(f'{w:g}' for w in weights)})")
    elif d.get("stages") == "auto":
        say(
            f"distill.stages=auto: {type(student).__name__} has no stage before its last one; "
            f"no stage heads, the divergence acts on the final logits only"
        )
    cached = None
    if datamodule is not None and cache_enabled(cfg, datamodule):
        logits, path, hit = cached_logits(cfg, teacher, index_training_split(datamodule))
        say(f"teacher logits {'read from' if hit else 'computed once and cached in'} {path}")
        cached = logits
    return DistillTask(
        model=student,
        teacher=teacher,
        terms=terms,
        ce_weight=d.ce_weight,
        stage_heads=heads,
        stage_names=stages,
        stage_weights=weights,
        warmup_epochs=warmup,
        teacher_logits=cached,
        **optimization(cfg),
    )


def stage_settings(d: DictConfig, student: nn.Module) -> tuple[list[str], list[float]]:
    """(feature names, loss weights) of the stage heads from distill.stages / distill.stage_weights."""
    stages = d.get("stages") or []
    if stages == "auto":
        stages = list(default_stages(student))
    elif not isinstance(stages, (list, ListConfig)) or not all(isinstance(n, str) for n in stages):
        raise ConfigError(
            f"distill.stages must be auto or a list of module names of the student, got {stages!r}"
        )
    stages = list(stages)
    weights = d.get("stage_weights")
    if weights is None:
        weights = [1.0] * len(stages)
    elif isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [float(weights)] * len(stages)
    weights = [float(w) for w in weights]
    if len(weights) != len(stages) or any(w < 0 for w in weights):
        raise ConfigError(
            f"distill.stage_weights must be one number >= 0 per stage of distill.stages "
            f"({len(stages)}: {stages}), got {list(weights)}"
        )
    return stages, weights


def term_log_names(terms) -> list[str]:
    """'kd' for a single term; 'kd_<name>' per term otherwise (numbered where a name repeats)."""
    if len(terms) == 1:
        return ["kd"]
    names = [f"kd_{t.name}" for t in terms]
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


class DistillTask(ClassifyTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # the student
        teacher: nn.Module,  # frozen; held outside the module tree
        divergence=None,  # one term: callable (target_logits, model_logits) -> per-row D(P||Q)
        temperature: float = 4.0,  # T > 0 of that one term
        ce_weight: float = 1.0,  # weight of CE to the labels
        kd_weight: float = 1.0,  # weight of that one term
        t_squared: bool = True,  # multiply that one term by T^2
        terms: list[KDTerm] | None = None,  # instead of the four above: a list of KDTerm
        stage_heads: nn.ModuleDict | None = None,  # projectors feature -> logits (build_stage_heads)
        stage_names: list[str] = (),  # the student modules they read, one per head
        stage_weights: list[float] = (),  # loss weight of each head
        warmup_epochs: int = 0,  # distillation terms ramp as min((epoch + 1) / w, 1); 0: none
        teacher_logits: torch.Tensor | None = None,  # (N, K) cache; batches then end in indices
        **classify_kwargs,
    ):  # optimizer, scheduler, seed (see ClassifyTask)
        super().__init__(model=model, task_name="distill", **classify_kwargs)
        self.hold_frozen("teacher", teacher)
        if (terms is None) == (divergence is None):
            raise ValueError(
                "DistillTask takes divergence= (one term) or terms= (a list of KDTerm), exactly one"
            )
        if terms is None:
            terms = [
                KDTerm(divergence=divergence, weight=kd_weight, temperature=temperature, t_squared=t_squared)
            ]
        if not terms:
            raise ValueError("DistillTask needs at least one distillation term")
        self.kd_terms = nn.ModuleList(terms)
        self.term_names = term_log_names(terms)
        self.ce_weight = ce_weight
        self.stage_heads = stage_heads  # registered: trained with the student, saved in its checkpoint
        self.stage_names, self.stage_weights = tuple(stage_names), tuple(stage_weights)
        if (stage_heads is not None or self.stage_names) and (
            stage_heads is None
            or [head_key(n) for n in self.stage_names] != list(stage_heads.keys())
            or len(self.stage_weights) != len(self.stage_names)
        ):
            raise ValueError("stage_heads, stage_names and stage_weights must match one to one")
        self._taps = None  # forward hooks, attached at the first training step
        self.warmup_epochs = warmup_epochs
        self._teacher_logits = (teacher_logits,)  # hidden: not a buffer, never in the checkpoint

    # the first term's settings (the only term's, in a one-divergence run)
    @property
    def divergence(self):
        return self.kd_terms[0].divergence

    @property
    def temperature(self) -> float:
        return self.kd_terms[0].temperature

    @property
    def kd_scale(self) -> float:
        return self.kd_terms[0].scale

    @property
    def kd_weight(self) -> float:
        return self.kd_terms[0].weight

    @property
    def teacher(self) -> nn.Module:
        return self.frozen("teacher")

    def on_fit_start(self) -> None:
        super().on_fit_start()
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
        if self._taps is None:  # not at init: hooks would stop the task pickling (ddp_spawn)
            self._taps = FeatureTaps(self.model, self.stage_names)
        return self._taps(x)

    def teacher_forward(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        cache = self._teacher_logits[0]
        if cache is not None:
            if index is None:
                raise RuntimeError(
                    "the teacher-logit cache needs batches (x, y, index); the training split "
                    "was not wrapped by teacher_logits.index_training_split"
                )
            return cache[index]
        with torch.no_grad():
            return self.teacher(x)

    def distill_loss(self, teacher_logits, logits, y, feats) -> tuple[torch.Tensor, dict]:
        """sum_i scale_i (w_i D_i(final) + sum_k stage_weight_k D_i(head_k)), before the warm-up factor,
        and the terms to log."""
        heads = [
            (head_key(n), w, self.stage_heads[head_key(n)](feats[n]))
            for n, w in zip(self.stage_names, self.stage_weights)
        ]
        logged, stage_totals = {}, {key: 0.0 for key, _, _ in heads}
        distill = 0.0
        for term, name in zip(self.kd_terms, self.term_names):
            kd = term(teacher_logits, logits, y)
            logged[name] = kd
            part = term.weight * kd
            for key, weight, head_logits in heads:
                value = term(teacher_logits, head_logits, y)
                stage_totals[key] = stage_totals[key] + (
                    value if len(self.kd_terms) == 1 else term.scale * value
                )
                part = part + weight * value
            distill = distill + term.scale * part
        if len(self.kd_terms) > 1:
            logged["kd"] = sum(t.scale * t.weight * logged[n] for t, n in zip(self.kd_terms, self.term_names))
        logged.update({f"stage_{key}": value for key, value in stage_totals.items()})
        return distill, logged

    def training_step(self, batch, batch_idx):
        x, y, *rest = batch
        teacher_logits = self.teacher_forward(x, rest[0] if rest else None)
        logits, feats = self.student_forward(x)
        ce = F.cross_entropy(logits, y)
        distill, logged = self.distill_loss(teacher_logits, logits, y, feats)
        loss = self.ce_weight * ce + self.warmup_factor() * distill
        for name, value in ({"ce": ce, **logged, "loss": loss}).items():
            self.track(name, value, len(y))
        return loss
