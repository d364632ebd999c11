"""Strict config values (issue 15): booleans are booleans, a task's own section holds only the keys its
config file declares, groups a task does not read are refused, and settings that train nothing fail early.

The reference for types and keys is the shipped config files themselves (conf/train.yaml and
conf/task/<task.name>.yaml), read as plain YAML: a key the file sets to true/false must stay a boolean.
"""

import math
import os
import warnings
from numbers import Real
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from divlab.errors import ConfigError

# Keys of a task section that the task file leaves unset on purpose (so that configs without them keep
# their hash) but that experiment files may set; see the comment at the top of conf/task/distill.yaml.
OPTIONAL_SECTION_KEYS = {"distill": ("terms",), "dpo": ("init", "init_train"), "rlvr": ("split",)}
# Groups only some tasks read (not listed in task.uses): the tasks that read them.
TASK_ONLY_GROUPS = {"mixer": ("mix_lm",), "judge": ("lm", "seqmatch", "mix_lm", "lm_distill")}
# Integer model settings whose value 0 builds a model with nothing to train (a hidden layer of width 0).
SIZE_KEYS = (
    "width",
    "hidden",
    "hidden_dim",
    "channels",
    "dim",
    "depth",
    "layers",
    "n_layer",
    "n_embd",
    "n_head",
)
# distill.temperature above this makes the softened distributions uniform to float32 precision.
LARGE_TEMPERATURE = 100.0


def _conf_file(*parts: str) -> Path | None:
    from divlab.cli.conf_dir import conf_dir  # a leaf module (no divlab import but the package)

    try:
        path = Path(conf_dir()).joinpath(*parts)
    except SystemExit:
        return None
    return path if path.is_file() else None


def _plain(path: Path | None) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path else {}


def _bool_keys(obj, prefix: str = "") -> list[str]:
    """Dotted keys whose value in a plain config mapping is a boolean."""
    found = []
    for key, value in obj.items() if isinstance(obj, dict) else ():
        if isinstance(value, bool):
            found.append(f"{prefix}{key}")
        elif isinstance(value, dict):
            found += _bool_keys(value, f"{prefix}{key}.")
    return found


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)


def check_booleans(cfg: DictConfig) -> None:
    """Every key conf/train.yaml or the task's file sets to true/false is a boolean (`rerun=no` is a string,
    and a truthy one: it would delete a finished run)."""
    task_file = _plain(_conf_file("task", f"{cfg.task.name}.yaml"))
    for key in _bool_keys(_plain(_conf_file("train.yaml"))) + _bool_keys(task_file):
        value = _select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")


def check_section_keys(cfg: DictConfig) -> None:
    """The task's own sections (task.uses entries that are not model or divergence groups) hold only the
    keys conf/task/<task>.yaml declares: `+distill.temprature=2` would change the hash and do nothing."""
    task_file = _plain(_conf_file("task", f"{cfg.task.name}.yaml"))
    for section in cfg.task.get("uses") or ():
        declared = task_file.get(section)
        if not isinstance(declared, dict) or not isinstance(cfg.get(section), DictConfig):
            continue
        known = set(declared) | set(OPTIONAL_SECTION_KEYS.get(section, ()))
        unknown = sorted(set(cfg[section].keys()) - known)
        if unknown:
            raise ConfigError(
                f"{section}.{unknown[0]} is not a setting of task={cfg.task.name}; its settings are "
                f"{', '.join(sorted(known))} (conf/task/{cfg.task.name}.yaml)"
            )


def check_unused_groups(cfg: DictConfig) -> None:
    for group, readers in TASK_ONLY_GROUPS.items():
        if cfg.get(group) is not None and cfg.task.name not in readers:
            raise ConfigError(
                f"{group}= is not read by task={cfg.task.name} (only by task={'/'.join(readers)}); "
                f"remove the {group} override"
            )


def _sizes(node: DictConfig, prefix: str):
    """(dotted key, value) of every SIZE_KEYS entry of a model config, list entries one by one."""
    for key in node.keys():
        if OmegaConf.is_interpolation(node, key):
            continue
        value, name = node[key], f"{prefix}.{key}"
        if isinstance(value, DictConfig):
            yield from _sizes(value, name)
        elif key in SIZE_KEYS and isinstance(value, ListConfig):
            yield from ((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif key in SIZE_KEYS:
            yield name, value


def check_trains_something(cfg: DictConfig) -> None:
    """Settings that train nothing: optimizer.lr = 0, distill weights all 0, a model size of 0."""
    lr = _select(cfg, "optimizer.lr")
    if lr is not None and not (
        isinstance(lr, Real) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)
    ):
        raise ConfigError(f"optimizer.lr must be a finite number > 0, got {lr!r}")
    for section in ("distill", "lm_distill"):
        if (
            section in (cfg.task.get("uses") or ())
            and cfg.get(section) is not None
            and not cfg[section].get("terms")
        ):
            if cfg[section].get("ce_weight") == 0 and cfg[section].get("kd_weight") == 0:
                raise ConfigError(
                    f"{section}.ce_weight and {section}.kd_weight are both 0, so nothing is trained; "
                    f"set one of them > 0"
                )
    for group in ("student", "teacher"):
        if isinstance(cfg.get(group), DictConfig) and isinstance(cfg[group].get("model"), DictConfig):
            for name, value in _sizes(cfg[group].model, f"{group}.model"):
                if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
                    raise ConfigError(
                        f"{name} must be a positive integer (a size of {value} builds nothing to "
                        f"train), got {value!r}"
                    )
    temperature = _select(cfg, "distill.temperature") if "distill" in (cfg.task.get("uses") or ()) else None
    if isinstance(temperature, Real) and LARGE_TEMPERATURE < temperature < math.inf:  # inf: refused later
        warnings.warn(
            f"distill.temperature={temperature:g} > {LARGE_TEMPERATURE:g}: the softened distributions are "
            f"uniform to float precision and the KD term is rounding noise",
            stacklevel=2,
        )


def check_int(cfg: DictConfig, key: str, *, low: int) -> None:
    value = _select(cfg, key)
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")


def check_trainer(cfg: DictConfig) -> None:
    """trainer.max_epochs, trainer.devices and trainer.accelerator, and data.datamodule.batch_size."""
    check_int(cfg, "data.datamodule.batch_size", low=1)
    epochs = _select(cfg, "trainer.max_epochs")
    if isinstance(epochs, float):  # the range (>= 1) is checked with the other numbers
        raise ConfigError(f"trainer.max_epochs must be a whole number of epochs, got {epochs!r}")
    devices = _select(cfg, "trainer.devices")
    if isinstance(devices, str) and devices != "auto" and not devices.replace(",", "").strip().isdigit():
        raise ConfigError(
            f"trainer.devices must be a number of devices, a list of indices or auto, got {devices!r}"
        )
    accelerator = str(_select(cfg, "trainer.accelerator") or "auto")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} but torch sees no CUDA GPU here; use trainer=cpu "
                f"(or trainer.accelerator=cpu)"
            )


def check_output_root(cfg: DictConfig) -> None:
    """paths.output_root is a directory divlab can write to (or can be created)."""
    root = Path(str(_select(cfg, "paths.output_root") or "outputs"))
    existing = next((p for p in [root, *root.parents] if p.exists()), Path("."))
    if existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"paths.output_root={root} is not a directory ({existing} is a file); point it at a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"paths.output_root={root} cannot be written ({existing} is not writable); point it at a "
            f"writable folder"
        )


def check_strict(cfg: DictConfig) -> None:
    """All of the above, in the order a user would fix them."""
    check_booleans(cfg)
    check_section_keys(cfg)
    check_unused_groups(cfg)
    check_trainer(cfg)
    check_trains_something(cfg)
    check_output_root(cfg)
