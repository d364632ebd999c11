"""Short stable hashes of configs: they name run directories and cached teachers."""

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Keys that change where or how a run is logged, not what it computes.
RUN_HASH_EXCLUDE = ("paths", "logger", "callbacks", "seed", "rerun", "print_config", "run_dir",
                    "experiment_name", "optimized_metric", "hydra")
# Groups a task reads only when its config lists them in `task.uses`.
OPTIONAL_GROUPS = ("student", "teacher", "divergence", "distill")


def stable_hash(obj: Any, length: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def prune_unused(cfg: DictConfig) -> DictConfig:
    """Set the optional groups the task does not read (not in `task.uses`) to None, in place, so
    they are neither resolved (a KD teacher's `${data.input_shape}` means nothing on text), hashed,
    nor printed."""
    uses = set(cfg.task.get("uses") or ())
    with open_dict(cfg):
        for key in OPTIONAL_GROUPS:
            if key not in uses and cfg.get(key) is not None:
                cfg[key] = None
    return cfg


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config minus logging/paths keys and the groups the task does not use."""
    cfg = prune_unused(cfg.copy())
    container = OmegaConf.to_container(cfg, resolve=True)
    drop = set(RUN_HASH_EXCLUDE) | {k for k in OPTIONAL_GROUPS if container.get(k) is None}
    trainer = dict(container.get("trainer") or {})
    trainer.pop("enable_progress_bar", None)
    container["trainer"] = trainer
    return stable_hash({k: v for k, v in container.items() if k not in drop})


def teacher_hash(cfg: DictConfig) -> str:
    """Hash of what determines a trained teacher: its architecture, the data and its recipe."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.get("datamodule", {}).pop("num_workers", None)
    return stable_hash({
        "model": OmegaConf.to_container(cfg.teacher.model, resolve=True),
        "data": data,
        "train": OmegaConf.to_container(cfg.teacher.train, resolve=True),
    })
