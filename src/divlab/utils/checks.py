"""Checks that run before anything trains: bad input fails here, in one sentence naming the key."""

import math
import re
from numbers import Real

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from divlab.errors import ConfigError
from divlab.utils.strict import check_strict

# Strategies that start their ranks from inside the process (safe under Hydra multirun). The
# others (ddp, fsdp, deepspeed, and "auto" on several devices, which picks ddp) re-execute the
# command line in every rank, so each rank would re-run the whole sweep.
SPAWN_SAFE = ("ddp_spawn", "ddp_fork", "ddp_notebook", "single_device")


def build(spec, **kwargs):
    """hydra.utils.instantiate, letting a constructor's one-sentence ConfigError through unwrapped."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def instantiation_error(error: InstantiationException) -> ConfigError:
    """Hydra's multi-line instantiation error as one sentence naming the config key that did not build
    (e.g. task=classify student=gpt_tiny: a GPT needs a vocabulary the digits data does not have)."""
    text = str(error)
    key = re.search(r"full_key: ([\w.\[\]]+)", text)
    target = re.search(r"target '([\w.]+)'", text)
    cause = error.__cause__ if error.__cause__ is not None else error
    reason = " ".join(str(cause).split())[:300]
    key = key.group(1) if key else "the config"
    group = key.split(".")[0]
    return ConfigError(
        f"{key} ({target.group(1) if target else 'its _target_'}) cannot be built from this "
        f"config: {reason}; choose a {group}= option that fits the task and the data"
    )


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys left as ??? (without resolving interpolations, which would raise on them)."""
    found = []
    for key in cfg.keys():
        if key == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += missing_keys(cfg[key], f"{prefix}{key}.")
    return sorted(found)


def hydra_mode() -> tuple[bool, str]:
    """(is multirun, launcher target) of the current Hydra job; (False, '') outside Hydra."""
    if not HydraConfig.initialized():
        return False, ""
    hc = HydraConfig.get()
    return str(hc.mode) == "RunMode.MULTIRUN", str(hc.launcher.get("_target_", ""))


def check_strategy_under_multirun(cfg: DictConfig) -> None:
    multirun, launcher = hydra_mode()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    one_process = str(cfg.trainer.get("devices", 1)) == "1" and int(cfg.trainer.get("num_nodes", 1)) == 1
    if not multirun or "slurm" in launcher.lower():  # SLURM starts one task per rank itself
        return
    if not (strategy.startswith(SPAWN_SAFE) or (strategy in ("auto", "None") and one_process)):
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run under Hydra multirun (-m): every rank would re-run "
            f"the sweep; use trainer=ddp_sim (ddp_spawn), trainer.strategy=ddp_spawn, or launcher=slurm"
        )


def check_number(cfg: DictConfig, key: str, *, low: float, strict: bool) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, Real) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok or not math.isfinite(value):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{key} must be a number {bound}{' and finite' if ok else ''}, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Fast checks on values alone (no model built, nothing written)."""
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(
            f"{missing[0]} must be set on the command line (e.g. {missing[0]}=...); "
            f"the config leaves it as ???"
        )
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    check_strict(
        cfg
    )  # booleans, unknown section keys and groups, trainer values, nothing to train, output root
    check_number(cfg, "trainer.max_epochs", low=1, strict=False)
    check_strategy_under_multirun(cfg)
    strategy = cfg.trainer.get("strategy")
    if (
        isinstance(strategy, DictConfig)
        and strategy.get("_target_") == "divlab.models.hf.sharding.ShardedHFStrategy"
    ):
        from divlab.models.hf.sharding import check_fsdp  # trainer=fsdp: HF models, a GPU, its precision

        check_fsdp(cfg)
    uses = set(cfg.task.get("uses") or ())
    for key in ("student", "teacher", "divergence"):
        if key in uses and cfg.get(key) is None:
            raise ConfigError(f"task={cfg.task.name} needs a {key}; choose one with {key}=<option>")
    if "distill" in uses:
        check_number(cfg, "distill.temperature", low=0.0, strict=True)
        check_number(cfg, "distill.ce_weight", low=0.0, strict=False)
        check_number(cfg, "distill.kd_weight", low=0.0, strict=False)
    if "divergence" not in uses:
        return
    from divlab.divergences import available

    name = cfg.divergence.get("name")
    if name not in available():
        raise ConfigError(
            f"divergence.name={name!r} is not a known divergence; choose one of: {', '.join(available())}"
        )


def check_models_agree(*, data_classes: int, student, teacher=None) -> None:
    """Teacher, student and data must agree on the number of classes."""
    if student.num_classes != data_classes:
        raise ConfigError(
            f"student.model has {student.num_classes} classes but the data has {data_classes}; "
            f"set student.model.num_classes={data_classes}"
        )
    if teacher is not None and teacher.num_classes != student.num_classes:
        raise ConfigError(
            f"teacher.model has {teacher.num_classes} classes but student.model has "
            f"{student.num_classes}; set teacher.model.num_classes to match"
        )


def check_takes_inputs(model, *, key: str, data) -> None:
    """`key` (e.g. teacher.model) takes images with as many channels as cfg.data gives (data.input_shape),
    checked on its first convolution before a teacher is trained or loaded, and without running it (a
    cached teacher never runs): a CIFAR (3-channel) network on 1-channel digits fails here."""
    import torch

    shape = data.get("input_shape")
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if shape is None or len(shape) != 3 or conv is None or conv.in_channels == shape[0]:
        return
    size, group = "x".join(map(str, shape)), key.split(".")[0]
    raise ConfigError(
        f"{key} ({type(model).__name__}) takes {conv.in_channels}-channel images but data={data.name} gives "
        f"{size} images; choose a {group}= option made for data={data.name}, or a data= option with "
        f"{conv.in_channels}-channel images"
    )
