"""Short stable hashes of configs: they name run directories and cached teachers."""

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Keys that change where or how a run is logged, not what it computes.
RUN_HASH_EXCLUDE = (
    "paths",
    "logger",
    "callbacks",
    "seed",
    "rerun",
    "print_config",
    "run_dir",
    "experiment_name",
    "optimized_metric",
    "hydra",
    "threads",
    "compile",
)
# Keys, at any depth, that name where something is stored, not what is computed (a model's conversion cache).
PATH_KEYS = ("cache_dir",)
# Groups a task reads only when its config lists them in `task.uses`.
OPTIONAL_GROUPS = ("student", "teacher", "divergence", "distill")


def stable_hash(obj: Any, length: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def drop_path_keys(obj: Any) -> Any:
    """obj (plain containers) without the PATH_KEYS entries of its mappings, at any depth."""
    if isinstance(obj, dict):
        return {k: drop_path_keys(v) for k, v in obj.items() if k not in PATH_KEYS}
    if isinstance(obj, list):
        return [drop_path_keys(v) for v in obj]
    return obj


def prune_unused(cfg: DictConfig) -> DictConfig:
    """Set the optional groups the task does not read (not in `task.uses`) to None, in place, so
    they are neither resolved (a KD teacher's `${data.input_shape}` means nothing on text), hashed,
    nor printed. A Hugging Face student on token data first brings its tokenizer (utils.hf_student)."""
    from divlab.utils.hf_student import follow_hf_student

    follow_hf_student(cfg)
    uses = set(cfg.task.get("uses") or ())
    with open_dict(cfg):
        for key in OPTIONAL_GROUPS:
            if key not in uses and cfg.get(key) is not None:
                cfg[key] = None
    return cfg


def drop_recipe_builders(obj: Any) -> Any:
    """A copy of a config container without the `builder` of any trained-once recipe (`<...>.train.builder`:
    teacher, judge, image-metric classifier): it names code, not what is computed, so it is in no hash."""
    if isinstance(obj, dict):
        return {
            k: (
                {kk: drop_recipe_builders(vv) for kk, vv in v.items() if kk != "builder"}
                if k == "train" and isinstance(v, dict)
                else drop_recipe_builders(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [drop_recipe_builders(v) for v in obj]
    return obj


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config minus logging/paths keys and the groups the task does not use."""
    cfg = prune_unused(cfg.copy())
    container = drop_path_keys(drop_recipe_builders(OmegaConf.to_container(cfg, resolve=True)))
    drop = set(RUN_HASH_EXCLUDE) | {k for k in OPTIONAL_GROUPS if container.get(k) is None}
    trainer = dict(container.get("trainer") or {})
    trainer.pop("enable_progress_bar", None)
    container["trainer"] = trainer
    return stable_hash({k: v for k, v in container.items() if k not in drop})


def teacher_hash(cfg: DictConfig) -> str:
    """Hash of what determines a trained teacher: its architecture, the data and its recipe. The recipe's
    `builder` (the function that trains it, named by its import path) is code, like divlab's version,
    and not part of the hash: moving a builder must not retrain every cached teacher."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.get("datamodule", {}).pop("num_workers", None)
    train = OmegaConf.to_container(cfg.teacher.train, resolve=True)
    train.pop("builder", None)
    return stable_hash(
        drop_path_keys(
            {
                "model": OmegaConf.to_container(cfg.teacher.model, resolve=True),
                "data": data,
                "train": train,
            }
        )
    )
