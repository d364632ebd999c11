"""Teacher provisioning: use a pretrained model as it is, load a checkpoint, or train once and cache.

`teacher.checkpoint` decides:
- `pretrained`: the model built from `teacher.model` already holds its weights (a Hugging Face model
  read from a local directory or hub id); it is only frozen: no cache, no training.
- `auto` (or null): look for `<paths.teacher_dir>/<hash>.ckpt`, where the hash covers the teacher
  architecture, the data config and the training recipe (`teacher.train` minus `builder`). When it
  is missing, the teacher is trained under a file lock, so parallel sweep jobs never train it twice,
  by the function `teacher.train.builder` names: (cfg, recipe) -> (network whose state_dict is
  cached, LightningModule that trains it, metadata for the checkpoint), e.g.
  `divlab.tasks.classify.build_teacher_task` (KD teachers), `divlab.tasks.denoise.build_teacher_task`
  (EDM diffusion teachers; the EMA weights are cached) or `divlab.tasks.lm.build_teacher_task` (a GPT
  by maximum likelihood: the text judge of divlab.metrics.judge and SequenceMatch's start model,
  which pass their config here as `teacher` with their own `role`). Provisioning imports no task.
- a path: a divlab checkpoint (a cached teacher or a run's `last.ckpt`/best checkpoint), loaded with
  `weights_only=True`.
"""

import os
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torch import nn

from divlab.errors import ConfigError
from divlab.utils.checks import build
from divlab.utils.hashing import teacher_hash
from divlab.utils.io import atomic_write_json, read_json


def cached_teacher_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.teacher_dir) / f"{teacher_hash(cfg)}.ckpt"


def read_divlab_checkpoint(path: Path, *, key: str) -> dict:
    """Load a checkpoint with weights_only=True and check it carries divlab metadata."""
    if path.is_dir():
        raise ConfigError(
            f"{key}={path} is a directory, not a checkpoint file; give the path of a .ckpt file "
            f"or set {key}=auto to train and cache the model"
        )
    if not path.is_file():
        raise ConfigError(
            f"{key}={path} does not exist; give an existing checkpoint path "
            f"or set {key}=auto to train and cache the model"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # not a torch file, or pickled objects weights_only refuses
        raise ConfigError(
            f"{key}={path} cannot be read as a weights-only torch checkpoint "
            f"({type(e).__name__}); point {key} at a divlab checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "divlab" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(
            f"{key}={path} is not a divlab checkpoint (no 'divlab' metadata); point {key} "
            f"at a cached teacher (outputs/teachers/*.ckpt) or a divlab run's checkpoint"
        )
    return ckpt


def load_weights(model: nn.Module, ckpt: dict, *, key: str, path: Path) -> None:
    state = ckpt["state_dict"]
    if ckpt["divlab"].get("kind") == "lightning":  # a run checkpoint: the network is `model.`
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    shapes = model.state_dict()
    wrong = next(
        (k for k, v in state.items() if k in shapes and tuple(v.shape) != tuple(shapes[k].shape)), None
    )
    if wrong is not None:
        raise ConfigError(
            f"{key}={path} does not fit {key.rsplit('.', 1)[0]}.model: tensor {wrong} has shape "
            f"{tuple(state[wrong].shape)} in the checkpoint but {tuple(shapes[wrong].shape)} in the "
            f"configured model; use the architecture it was trained with"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{key}={path} does not fit {key.rsplit('.', 1)[0]}.model "
            f"(missing {len(result.missing_keys)} and unexpected "
            f"{len(result.unexpected_keys)} tensors); use the architecture it was trained with"
        )


def freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


PRETRAINED = "pretrained"


def provision_teacher(
    cfg: DictConfig, model: nn.Module, *, role: str = "teacher", key: str | None = None
) -> nn.Module:
    """`model` (built from cfg.teacher.model) with its weights loaded or trained-and-cached, frozen.
    `role` names the model in messages (the judge's config is passed here as cfg.teacher); `key` is the
    setting that holds the checkpoint (default `<role>.checkpoint`)."""
    key = key or f"{role}.checkpoint"
    ckpt_setting = cfg.teacher.checkpoint
    if ckpt_setting == PRETRAINED:  # the model holds its weights already (Hugging Face)
        return freeze(model)
    if ckpt_setting in (None, "auto"):
        path = cached_teacher_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                train_teacher(cfg, path, role=role)
    else:
        path = Path(str(ckpt_setting))
    ckpt = read_divlab_checkpoint(path, key=key)
    load_weights(model, ckpt, key=key, path=path)
    return freeze(model)


def teacher_record(cfg: DictConfig) -> dict | None:
    """Metrics of the cached teacher for cfg, or None when it is not cached."""
    sidecar = cached_teacher_path(cfg).with_suffix(".json")
    return read_json(sidecar) if sidecar.exists() else None


def teacher_builder(recipe: DictConfig, *, role: str):
    """The function `<role>.train.builder` names: (cfg, recipe) -> (network to cache, LightningModule, metadata)."""
    name = recipe.get("builder")
    if not name:
        raise ConfigError(
            f"{role}.train.builder is not set; name the function that builds the {role}'s training "
            f"task, e.g. divlab.tasks.classify.build_teacher_task (see conf/teacher/digits_cnn.yaml)"
        )
    try:
        return get_method(str(name))
    except Exception as e:  # hydra wraps a missing module or attribute
        raise ConfigError(
            f"{role}.train.builder={name} cannot be imported ({type(e).__name__}); "
            f"name a function such as divlab.tasks.classify.build_teacher_task"
        ) from None


def train_teacher(cfg: DictConfig, path: Path, *, role: str = "teacher") -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import RichProgressBar

    recipe = cfg.teacher.train
    print(f"training the {role} once ({recipe.max_epochs} epochs); it is cached as {path}", flush=True)
    start = time.time()
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    model, task, extra_meta = teacher_builder(recipe, role=role)(cfg, recipe)
    datamodule = build(cfg.data.datamodule, seed=recipe.seed)
    progress = cfg.trainer.get("enable_progress_bar", True)
    deterministic = torch.are_deterministic_algorithms_enabled()  # the Trainer below turns it on, globally
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_epochs=recipe.max_epochs,
        limit_train_batches=recipe.get("limit_train_batches") or 1.0,
        logger=False,
        enable_checkpointing=False,
        deterministic=True,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[RichProgressBar()] if progress else [],
    )
    try:
        trainer.fit(task, datamodule=datamodule)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "best/"))}
        test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    finally:  # this Trainer's deterministic=True is global in torch; the run that asked keeps its own setting
        torch.use_deterministic_algorithms(deterministic)
    metrics = {**val, **{k: float(v) for k, v in test.items()}}
    meta = {"format": 1, "kind": "teacher", **extra_meta, "hash": path.stem, "metrics": metrics}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"divlab": meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    atomic_write_json(
        path.with_suffix(".json"),
        {
            "metrics": metrics,
            "wall_time_s": round(time.time() - start, 2),
            "hash": path.stem,
            "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
            "data": OmegaConf.to_container(cfg.data, resolve=True),
        },
    )
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/"))
    print(f"{role} trained in {time.time() - start:.1f} s: {shown}", flush=True)


def model_view(cfg: DictConfig, spec: dict, *, batch_size: int | None = None) -> DictConfig:
    """The config `provision_teacher` reads for a model that is not the run's teacher (the text judge,
    SequenceMatch's behaviour-cloning start): `teacher` = spec (model, checkpoint, train), the run's data
    (with `batch_size` while it trains, when given) and the run's paths and accelerator."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if batch_size:
        data["datamodule"]["batch_size"] = int(batch_size)
    return OmegaConf.create(
        {
            "teacher": spec,
            "data": data,
            "paths": OmegaConf.to_container(cfg.paths, resolve=True),
            "trainer": {
                "accelerator": cfg.trainer.accelerator,
                "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
            },
        }
    )
