"""Sharding Hugging Face LMs over GPUs (`trainer=fsdp`): Lightning's FSDPStrategy with the wrap unit, the
activation-checkpointed unit and the frozen teacher taken from the task's models instead of the config.

- `block_classes(model, key=...)`: the transformer block class(es) of an HFCausalLM, from the HF model's
  `_no_split_modules` (the classes `transformers` itself never splits across devices), else the class of
  the first entry of its `layers`/`h`/`blocks` list; one sentence naming `key` when neither exists.
- `check_fsdp(cfg)`: what a composed config can get wrong before anything is built (a CPU accelerator, a
  student that is not a Hugging Face LM, a precision FSDP does not run, compile=true).
- `ShardedHFStrategy`: FSDP (FULL_SHARD, use_orig_params) whose auto-wrap policy is those block classes;
  the task's frozen models (`DivlabTask.hold_frozen`, e.g. the teacher) are sharded too: each is attached
  under `sharded_<name>` before wrapping, so its blocks become FSDP units of the same root (gathered one
  block at a time in its no-grad forward, not replicated on every GPU), and its keys are left out of the
  checkpoints it writes (the frozen model is rebuilt from its own cache, as on one device). Only the
  student's blocks are activation-checkpointed (the teacher keeps no activations). The task's whole
  training_step runs inside the root FSDP forward, so the root's own parameters (embeddings, final norm,
  the tied LM head that the fused losses read as `output_weight`) are unsharded while it runs; the epoch-end
  hooks that generate (test metrics) are routed through that forward too.

Lightning's FSDP precision cannot clip gradients by norm (no root module); here the root's clip_grad_norm_ does,
over every rank's shard. trainer.test after fit reuses the root of the fit (Lightning would leave it unwrapped).
Tests: tests/unit/test_sharding.py (block classes, every refusal); tests/integration/test_lm_distill_fsdp_cpu.py
(slow: 2 CPU ranks on gloo with the GPU requirement lifted equal 1 process; no teacher in the checkpoint).
scripts/gpu_lm_distill.py measures it on GPUs.
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig
from torch import nn

from divlab.errors import ConfigError

HF_BUILDERS = (  # the _target_ of every Hugging Face teacher/student spec
    "divlab.models.hf.build_hf_lm",
    "divlab.provision.pretrained.build_pretrained_hf_lm",  # an HF student LM-pre-trained first
)
PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "32", "bf16-true")  # what Lightning's FSDPPrecision runs
ATTACHED = "sharded_"  # prefix of a frozen model attached to the task while it is sharded
# Task hooks that may run the models outside a step (test-time generation): run inside the root FSDP forward too
REDIRECTED = ("on_validation_epoch_end", "on_test_epoch_end")


def _layer_list(hf: nn.Module) -> nn.ModuleList | None:
    base = getattr(hf, "base_model", hf)
    for name in ("layers", "h", "blocks"):
        found = getattr(base, name, None)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    return None


def block_classes(model: nn.Module | None, *, key: str, block_class: str | None = None) -> set[type]:
    """The transformer block class(es) of `model` (an HFCausalLM) that FSDP wraps one unit each: the module
    classes named `block_class` if given, else those named by `model.hf._no_split_modules`, else the class of
    the first block of its layer list."""
    hf = getattr(model, "hf", None)
    if not isinstance(hf, nn.Module):
        raise ConfigError(
            f"trainer=fsdp wraps the transformer blocks of Hugging Face models, but {key} is "
            f"{type(model).__name__}; use trainer=ddp_gpu for it, or a smollm2_* / source=local model"
        )
    classes = {type(m).__name__: type(m) for m in hf.modules()}
    if block_class is not None:
        if block_class not in classes:
            raise ConfigError(
                f"trainer.strategy.block_class={block_class} is not a module class of {key} "
                f"({type(hf).__name__}); set it to its transformer block (e.g. LlamaDecoderLayer) or null"
            )
        return {classes[block_class]}
    found = {classes[n] for n in (getattr(hf, "_no_split_modules", None) or ()) if n in classes}
    if not found:
        layers = _layer_list(hf)
        found = {type(layers[0])} if layers is not None else set()
    if not found:
        raise ConfigError(
            f"trainer=fsdp cannot tell the transformer block class of {key} ({type(hf).__name__}: no "
            f"_no_split_modules and no layers list); set trainer.strategy.block_class=<its block class name>"
        )
    return found


def check_fsdp(cfg: DictConfig) -> None:
    """trainer=fsdp on a composed config: one sentence naming the key for each thing it cannot run."""
    t = cfg.trainer
    accelerator = str(t.get("accelerator", "auto"))
    if accelerator == "cpu":
        raise ConfigError(
            "trainer=fsdp shards models over GPUs, but trainer.accelerator=cpu; use trainer=ddp_sim (two CPU "
            "processes) or trainer=cpu here, or trainer.accelerator=gpu on a GPU machine"
        )
    student = cfg.get("student")
    target = str((student.get("model") or {}).get("_target_", "")) if student is not None else ""
    if target not in HF_BUILDERS:
        name = cfg.task.get("name", "?")
        raise ConfigError(
            f"trainer=fsdp wraps the transformer blocks of a Hugging Face student, but task={name} has "
            f"student.model._target_={target or None}; use trainer=ddp_gpu (or trainer=ddp) for this task"
        )
    teacher = cfg.get("teacher")
    if "teacher" in (cfg.task.get("uses") or ()) and teacher is not None:
        teacher_target = str((teacher.get("model") or {}).get("_target_", ""))
        if teacher_target not in HF_BUILDERS:
            raise ConfigError(
                f"trainer=fsdp shards the frozen teacher as well, but teacher.model._target_={teacher_target} "
                f"is not a Hugging Face LM; use trainer=ddp_gpu with this teacher"
            )
    precision = str(t.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not a precision FSDP runs; use bf16-mixed (the trainer=fsdp "
            f"default) or one of {', '.join(PRECISIONS)}"
        )
    if cfg.get("compile"):
        raise ConfigError(
            "compile=true compiles the student before FSDP wraps it, which FSDP does not support; set "
            "compile=false with trainer=fsdp"
        )
    strategy = t.get("strategy")
    block = strategy.get("block_class") if isinstance(strategy, DictConfig) else None
    for key in ("compile", "gradient_checkpointing"):
        if student.model.get(key):
            raise ConfigError(
                f"student.model.{key}=true wraps the student's blocks before FSDP does (trainer=fsdp "
                f"checkpoints them itself: trainer.strategy.checkpoint_blocks); set student.model.{key}=false"
            )
    if block is not None and (not isinstance(block, str) or not block.isidentifier()):
        raise ConfigError(
            f"trainer.strategy.block_class must be a module class name (e.g. LlamaDecoderLayer) or null, "
            f"got {block!r}"
        )


class ShardedHFStrategy(FSDPStrategy):
    """FSDPStrategy for divlab's HF tasks (see the module docstring); the other arguments are FSDPStrategy's."""

    def __init__(
        self,
        *,
        block_class: str | None = None,  # the block class name to wrap; None: derived from the student
        checkpoint_blocks: bool = True,  # activation checkpointing of the student's blocks
        shard_frozen: bool = True,  # shard the task's frozen models (the teacher) too
        **kwargs,  # FSDPStrategy's (sharding_strategy, state_dict_type, cpu_offload, ...)
    ) -> None:
        if "auto_wrap_policy" in kwargs or "activation_checkpointing_policy" in kwargs:
            raise ConfigError(
                "trainer.strategy of trainer=fsdp derives auto_wrap_policy and activation_checkpointing_policy "
                "from the model; set trainer.strategy.block_class instead"
            )
        super().__init__(**kwargs)
        self.block_class = block_class
        self.checkpoint_blocks, self.shard_frozen = checkpoint_blocks, shard_frozen
        self._root = None  # the root FSDP module of the first setup, reused by trainer.test after fit

    def _configure_launcher(self) -> None:  # runs in Trainer(...), before any process starts
        from lightning.pytorch.accelerators import CUDAAccelerator

        if self.accelerator is not None and not isinstance(self.accelerator, CUDAAccelerator):
            raise ConfigError(
                f"trainer=fsdp shards models over GPUs, but the accelerator is {type(self.accelerator).__name__}; "
                f"use trainer=ddp_sim or trainer=cpu on this machine"
            )
        super()._configure_launcher()

    def connect(self, model) -> None:  # at fit/test start, before the process group: models checked here
        super().connect(model)
        self.policy_of(model)

    def frozen_models(self, task) -> dict[str, nn.Module]:
        held = getattr(task, "_frozen", {}) if self.shard_frozen else {}
        return {name: m for name, m in held.items() if isinstance(m, nn.Module)}

    def policy_of(self, task) -> tuple[set[type], set[int]]:
        """(block classes of the student and the frozen models, ids of the student's blocks)."""
        student = getattr(task, "model", None)
        blocks = block_classes(student, key="student.model", block_class=self.block_class)
        student_blocks = {id(m) for m in student.modules() if isinstance(m, tuple(blocks))}
        for name, module in self.frozen_models(task).items():
            blocks |= block_classes(module, key=f"{name}.model", block_class=self.block_class)
        return blocks, student_blocks

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        task = self.lightning_module
        if self._root is not None and self._root.module is model:  # test after fit: the same root, whose
            return self._root  # forward gathers the root's own parameters (Lightning would not re-wrap it)
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):  # first setup only
            blocks, student_blocks = self.policy_of(task)
            for name, module in self.frozen_models(task).items():
                if not hasattr(task, ATTACHED + name):
                    task.add_module(ATTACHED + name, module)  # the same object frozen(name) returns
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
            self._activation_checkpointing_kwargs = (
                {"check_fn": lambda m: id(m) in student_blocks} if self.checkpoint_blocks else {}
            )
            self.redirect_hooks(task)
        # Lightning's FSDP precision refuses clipping by norm (it has no root module); the root FSDP module's
        # clip_grad_norm_ takes the norm over every rank's shard (trainer.gradient_clip_val of task=lm_distill)
        self.precision_plugin.clip_grad_by_norm = lambda optimizer, clip_val: self.model.clip_grad_norm_(
            clip_val
        )
        self._root = super()._setup_model(model)
        return self._root

    def redirect_hooks(self, task) -> None:
        """Lightning runs training/validation/test steps inside the root FSDP forward (its forward redirection),
        where the root's own parameters are gathered; the REDIRECTED epoch-end hooks get the same treatment."""
        for hook in REDIRECTED:
            inner = f"_unsharded_{hook}"
            if not hasattr(task, inner):
                setattr(task, inner, getattr(task, hook))
                setattr(task, hook, lambda inner=inner: self._forward_redirection(self.model, task, inner))

    def lightning_module_state_dict(self) -> dict:
        return {k: v for k, v in super().lightning_module_state_dict().items() if not k.startswith(ATTACHED)}

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Checkpoints hold no frozen model (above): its keys are the only ones allowed to be missing."""
        task = self.lightning_module
        attached = [n for n, _ in task.named_children() if n.startswith(ATTACHED)]
        if not attached:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        strict, task.strict_loading = task.strict_loading, False
        try:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        finally:
            task.strict_loading = strict
