"""Short stable hashes of configs: they name run directories and cached teachers."""

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that change where or how a run is logged, not what it computes.
RUN_HASH_EXCLUDE = ("paths", "logger", "callbacks", "seed", "rerun", "print_config", "run_dir",
                    "experiment_name", "optimized_metric", "hydra")
# Keys a task without a teacher never reads.
TEACHER_KEYS = ("teacher", "divergence", "distill")


def stable_hash(obj: Any, length: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config minus logging/paths keys (and teacher keys when unused)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    drop = set(RUN_HASH_EXCLUDE)
    if not cfg.task.get("uses_teacher", False):
        drop.update(TEACHER_KEYS)
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
