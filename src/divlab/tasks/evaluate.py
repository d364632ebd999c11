"""task=evaluate: FID, Inception Score and precision/recall of a saved one-step generator (no training).

    divlab experiment=onestep/cifar10/fdistill_js task=evaluate evaluate.generator=<run>/checkpoints/last.ckpt

The generator is `student.model` in EDMPrecond (as task=one_step builds it) with the EMA weights of a
task=one_step checkpoint (`generator_ema.module.*`; evaluate.weights=raw takes `generator.*`); its
sample is x = G(sigma_max z; sigma_max) (a class-conditional generator gets the classes in turn). The reference statistics come from the data set itself
(evaluate.reference_split, all of it by default: the 50k CIFAR-10 training images, un-augmented).
Both image sets are mapped back to [0, 255] through the data module's normalisation (mean/std when it
has them, else evaluate.pixel_range) and scored by divlab.metrics.fid (torchmetrics on torch-fidelity's
Inception-v3, or the stand-in extractors named by evaluate.features).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.metrics.fid import GenerativeScores, inception_extractors, score_generator, to_uint8
from divlab.models.edm import SIGMA_MAX
from divlab.tasks.base import DivlabTask

__all__ = ["EvaluateTask", "build", "load_generator"]
PREFIX = {"ema": "generator_ema.module.", "raw": "generator."}


def load_generator(cfg: DictConfig) -> nn.Module:
    """student.model in EDMPrecond with the weights of evaluate.generator (a task=one_step checkpoint)."""
    from divlab.provision.teacher import freeze, read_divlab_checkpoint
    from divlab.tasks.denoise import build_denoiser

    e = cfg.evaluate
    if not e.get("generator"):
        raise ConfigError(
            "evaluate.generator is not set; point it at a task=one_step checkpoint (<run>/checkpoints/"
            "last.ckpt)"
        )
    if e.weights not in PREFIX:
        raise ConfigError(f"evaluate.weights must be one of {', '.join(PREFIX)}, got {e.weights!r}")
    path = Path(str(e.generator))
    ckpt = read_divlab_checkpoint(path, key="evaluate.generator")
    prefix = PREFIX[e.weights]
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ConfigError(
            f"evaluate.generator={path} holds no '{prefix}*' tensors; point it at a task=one_step checkpoint"
        )
    generator = build_denoiser(cfg.student.model, cfg.data)
    result = generator.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        first = (result.missing_keys or result.unexpected_keys)[0]
        raise ConfigError(
            f"evaluate.generator={path} does not fit student.model (first mismatch: {first!r}); use the "
            f"student config the generator was trained with"
        )
    return freeze(generator)


def build_extractors(cfg: DictConfig) -> tuple[nn.Module, nn.Module | None]:
    from divlab.utils.checks import build as build_spec

    feats = cfg.evaluate.get("features")
    if feats is None:
        return inception_extractors(cfg.evaluate.get("inception_weights"))
    if feats.get("pool") is None:
        raise ConfigError(
            "evaluate.features.pool must name a feature extractor (or set evaluate.features=null "
            "for Inception-v3)"
        )
    return build_spec(feats.pool), build_spec(feats.logits) if feats.get("logits") is not None else None


def build(cfg: DictConfig, *, datamodule=None) -> EvaluateTask:
    """task.builder of task=evaluate."""
    e = cfg.evaluate
    for key in ("num_samples", "batch_size"):
        if not int(e[key]) >= 1:
            raise ConfigError(f"evaluate.{key} must be >= 1, got {e[key]!r}")
    lo, hi = (float(v) for v in e.pixel_range)
    if not hi > lo:
        raise ConfigError(
            f"evaluate.pixel_range must be [low, high] with high > low, got {list(e.pixel_range)}"
        )
    generator = load_generator(cfg)
    pool, logits = build_extractors(cfg)
    return EvaluateTask(
        generator=generator,
        pool=pool,
        logits=logits,
        num_samples=int(e.num_samples),
        batch_size=int(e.batch_size),
        reference_split=str(e.reference_split),
        reference_limit=e.get("reference_limit"),
        pixel_range=(lo, hi),
        knn_k=int(e.knn_k),
        pr_samples=int(e.pr_samples),
        seed=int(cfg.seed),
    )


class EvaluateTask(DivlabTask):
    def __init__(
        self,
        *,
        generator: nn.Module,  # x = generator(sigma_max z; sigma_max), frozen
        pool: nn.Module,  # uint8 images -> features (FID, precision/recall)
        logits: nn.Module | None,  # uint8 images -> logits (IS); None: no IS
        num_samples: int = 50_000,  # generated images scored
        batch_size: int = 500,  # generated per forward pass
        reference_split: str = "train",  # data split whose images give the reference statistics
        reference_limit: int | None = None,  # first N reference images (None: the whole split)
        pixel_range: tuple = (-1.0, 1.0),  # data range when the data module has no mean/std
        knn_k: int = 3,  # k of precision/recall
        pr_samples: int = 10_000,  # images per set for precision/recall
        seed: int = 0,
    ):  # fixes the latents
        super().__init__(seed=seed, task_name="evaluate")
        self.hold_frozen("generator", generator)
        self.hold_frozen("pool", pool)
        self.hold_frozen("logits", logits)
        self.num_samples, self.batch_size = num_samples, batch_size
        self.reference_split, self.reference_limit, self.pixel_range = (
            reference_split,
            reference_limit,
            pixel_range,
        )
        self.knn_k, self.pr_samples = knn_k, pr_samples

    def to_uint8(self, images: Tensor) -> Tensor:
        dm = self.trainer.datamodule
        if hasattr(dm, "mean") and hasattr(dm, "std"):  # undo the data module's per-channel normalisation
            mean = torch.as_tensor(dm.mean, device=images.device).reshape(1, -1, 1, 1)
            std = torch.as_tensor(dm.std, device=images.device).reshape(1, -1, 1, 1)
            return to_uint8(images * std + mean, low=0.0, high=1.0)
        return to_uint8(images, low=self.pixel_range[0], high=self.pixel_range[1])

    def reference_batches(self):
        dm = self.trainer.datamodule
        if self.reference_split == "train" and getattr(dm, "augmented", False):
            raise ConfigError(
                "the reference statistics must come from un-augmented images; set "
                "data.datamodule.augment=false for task=evaluate"
            )
        loader = getattr(dm, f"{self.reference_split}_dataloader", None)
        if loader is None:
            raise ConfigError(
                f"evaluate.reference_split={self.reference_split} is not a split of data={dm}; "
                f"use train, val or test"
            )
        seen = 0
        for batch in loader():
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            if self.reference_limit is not None:
                images = images[: max(0, int(self.reference_limit) - seen)]
            if not len(images):
                return
            seen += len(images)
            yield self.to_uint8(images.to(self.device))

    @torch.no_grad()
    def generate(self, index: int, n: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        z = torch.randn(n, *self.trainer.datamodule.input_shape, generator=gen).to(self.device)
        sigma = torch.full((n,), SIGMA_MAX, device=self.device)
        net, labels = self.frozen("generator"), ()
        classes = getattr(getattr(net, "net", None), "label_dim", 0)
        if classes:  # class-conditional: the classes in turn (a balanced set)
            labels = ((torch.arange(n, device=self.device) + index * self.batch_size) % classes,)
        return self.to_uint8(net(SIGMA_MAX * z, sigma, *labels))

    def test_step(self, batch, batch_idx):
        pass  # everything is scored at epoch end

    def on_test_epoch_end(self) -> None:
        scores = GenerativeScores(
            pool=self.frozen("pool"),
            logits=self.frozen("logits"),
            knn_k=self.knn_k,
            pr_samples=self.pr_samples,
            device=self.device,
        )
        metrics = score_generator(
            self.generate,
            self.reference_batches(),
            scores,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
        )
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
