"""Teacher provisioning: load a checkpoint, or train once and cache by a hash of the recipe.

`teacher.checkpoint: auto` looks for `<paths.teacher_dir>/<hash>.ckpt`, where the hash covers the
teacher architecture, the data config and the training recipe. When it is missing, the teacher
is trained under a file lock, so parallel sweep jobs never train it twice, by the task its recipe
names in `teacher.train.task`: `classify` (the default; KD teachers), `denoise` (EDM diffusion
teachers, divlab.tasks.denoise; the cached weights are the EMA weights of the EDMPrecond) or `lm`
(a GPT by maximum likelihood on token data; the text judge of divlab.metrics.judge, which passes
its config here as `teacher` and `role="judge"`).
An explicit path must be a divlab checkpoint (a cached teacher or a run's `last.ckpt`/best
checkpoint) and is loaded with `weights_only=True`.
"""

import functools
import os
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from hydra.utils import instantiate
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
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist; give an existing checkpoint path "
                          f"or set {key}=auto to train and cache the model")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # not a torch file, or pickled objects weights_only refuses
        raise ConfigError(f"{key}={path} cannot be read as a weights-only torch checkpoint "
                          f"({type(e).__name__}); point {key} at a divlab checkpoint") from None
    if not isinstance(ckpt, dict) or "divlab" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"{key}={path} is not a divlab checkpoint (no 'divlab' metadata); point {key} "
                          f"at a cached teacher (outputs/teachers/*.ckpt) or a divlab run's checkpoint")
    return ckpt


def load_weights(model: nn.Module, ckpt: dict, *, key: str, path: Path) -> None:
    state = ckpt["state_dict"]
    if ckpt["divlab"].get("kind") == "lightning":     # a run checkpoint: the network is `model.`
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{key}={path} does not fit {key.rsplit('.', 1)[0]}.model "
                          f"(missing {len(result.missing_keys)} and unexpected "
                          f"{len(result.unexpected_keys)} tensors); use the architecture it was trained with")


def freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def provision_teacher(cfg: DictConfig, model: nn.Module, *, role: str = "teacher",
                      key: str | None = None) -> nn.Module:
    """`model` (built from cfg.teacher.model) with its weights loaded or trained-and-cached, frozen.
    `role` names the model in messages (the judge's config is passed here as cfg.teacher); `key` is the
    setting that holds the checkpoint (default `<role>.checkpoint`)."""
    key = key or f"{role}.checkpoint"
    ckpt_setting = cfg.teacher.checkpoint
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


TEACHER_TASKS = ("classify", "denoise", "lm")


def teacher_task(cfg: DictConfig, recipe: DictConfig):
    """(network whose state_dict is cached, LightningModule that trains it, metadata) for the recipe's task."""
    name = recipe.get("task", "classify")
    if name == "classify":
        from divlab.tasks import ClassifyTask

        model = instantiate(cfg.teacher.model)
        scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=recipe.max_epochs)
        task = ClassifyTask(model=model, optimizer=instantiate(recipe.optimizer), scheduler=scheduler,
                            seed=recipe.seed, task_name="teacher")
        return model, task, {"num_classes": int(model.num_classes)}
    if name == "denoise":
        from divlab.tasks.denoise import DenoiseTask, build_denoiser

        scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=recipe.max_epochs)
        task = DenoiseTask(model=build_denoiser(cfg.teacher.model, cfg.data), optimizer=instantiate(recipe.optimizer),
                           scheduler=scheduler, seed=recipe.seed, ema_halflife_steps=recipe.ema_halflife_steps,
                           sample_steps=recipe.sample_steps, eval_samples=recipe.eval_samples,
                           task_name="teacher")
        return task.ema.module, task, {"sigma_data": task.model.sigma_data}
    if name == "lm":
        from divlab.tasks.lm import LMTask

        model = instantiate(cfg.teacher.model)
        scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=recipe.max_epochs)
        task = LMTask(model=model, tokenizer=build(cfg.data.datamodule).tokenizer,
                      optimizer=instantiate(recipe.optimizer), scheduler=scheduler, seed=recipe.seed,
                      n_samples=0, text_windows=0, task_name="teacher")
        return model, task, {"vocab_size": int(model.vocab_size)}
    raise ConfigError(f"teacher.train.task={name!r} cannot train a teacher; choose one of {', '.join(TEACHER_TASKS)}")


def train_teacher(cfg: DictConfig, path: Path, *, role: str = "teacher") -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import RichProgressBar

    recipe = cfg.teacher.train
    print(f"training the {role} once ({recipe.max_epochs} epochs); it is cached as {path}", flush=True)
    start = time.time()
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    model, task, extra_meta = teacher_task(cfg, recipe)
    datamodule = build(cfg.data.datamodule, seed=recipe.seed)
    progress = cfg.trainer.get("enable_progress_bar", True)
    deterministic = torch.are_deterministic_algorithms_enabled()   # the Trainer below turns it on, globally
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=1, max_epochs=recipe.max_epochs,
                         limit_train_batches=recipe.get("limit_train_batches") or 1.0, logger=False, enable_checkpointing=False, deterministic=True,
                         num_sanity_val_steps=0, enable_model_summary=False,
                         enable_progress_bar=progress, callbacks=[RichProgressBar()] if progress else [])
    try:
        trainer.fit(task, datamodule=datamodule)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "best/"))}
        test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    finally:   # this Trainer's deterministic=True is global in torch; the run that asked keeps its own setting
        torch.use_deterministic_algorithms(deterministic)
    metrics = {**val, **{k: float(v) for k, v in test.items()}}
    meta = {"format": 1, "kind": "teacher", **extra_meta, "hash": path.stem, "metrics": metrics}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"divlab": meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    atomic_write_json(path.with_suffix(".json"), {
        "metrics": metrics, "wall_time_s": round(time.time() - start, 2), "hash": path.stem,
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True)})
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/"))
    print(f"{role} trained in {time.time() - start:.1f} s: {shown}", flush=True)


def model_view(cfg: DictConfig, spec: dict, *, batch_size: int | None = None) -> DictConfig:
    """The config `provision_teacher` reads for a model that is not the run's teacher (the text judge,
    SequenceMatch's behaviour-cloning start): `teacher` = spec (model, checkpoint, train), the run's data
    (with `batch_size` while it trains, when given) and the run's paths and accelerator."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if batch_size:
        data["datamodule"]["batch_size"] = int(batch_size)
    return OmegaConf.create({
        "teacher": spec, "data": data, "paths": OmegaConf.to_container(cfg.paths, resolve=True),
        "trainer": {"accelerator": cfg.trainer.accelerator,
                    "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True)}})
