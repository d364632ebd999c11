"""Supervised classification with cross-entropy. Trains teachers and CE-only baselines.

Everything a divlab classification run shares lives here: accuracy metrics that are correct
under DDP, best-validation tracking that survives a resume, per-epoch reseeding (so a resumed
run is bit-identical to an uninterrupted one on CPU), and divlab metadata in checkpoints.
"""

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from divlab.tasks.running_means import RunningMeans

CHECKPOINT_FORMAT = 1


def optimization(cfg: DictConfig) -> dict:
    """optimizer / scheduler factories and the seed of a run, as task keyword arguments."""
    from hydra.utils import instantiate

    return {"optimizer": instantiate(cfg.optimizer),
            "scheduler": instantiate(cfg.scheduler) if cfg.get("scheduler") else None, "seed": cfg.seed}


def optimizer_config(params, optimizer_factory: Callable, scheduler_factory: Callable | None):
    """What configure_optimizers returns: the optimiser over params, and its scheduler stepped per epoch."""
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_factory(optimizer), "interval": "epoch"}}


def build(cfg: DictConfig, *, datamodule=None) -> "ClassifyTask":
    """task.builder of task=classify: the student alone, trained with cross-entropy."""
    from divlab.utils.checks import build as build_spec
    from divlab.utils.checks import check_models_agree

    student = build_spec(cfg.student.model)
    check_models_agree(data_classes=cfg.data.num_classes, student=student)
    return ClassifyTask(model=student, **optimization(cfg))


class ClassifyTask(pl.LightningModule):
    def __init__(self, *,
                 model: nn.Module,                  # the network being trained (student)
                 optimizer: Callable,               # partial: params -> torch.optim.Optimizer
                 scheduler: Callable | None = None, # partial: optimizer -> LR scheduler (stepped per epoch)
                 seed: int = 0,                     # reseeds torch at every epoch start
                 task_name: str = "classify"):      # recorded in checkpoints
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.seed, self.task_name = seed, task_name
        num_classes = model.num_classes
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.best_val_acc, self.best_epoch = float("-inf"), -1
        self.train_means = RunningMeans()   # per-epoch means of training terms, logged at epoch end

    def track(self, name: str, value: torch.Tensor, n: int) -> None:
        """Accumulate a training term; cheaper per step than self.log, and all-reduced at epoch end."""
        self.train_means.update(name, value, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        # Dropout/augmentation randomness depends on (seed, epoch, rank) only: resumes are exact.
        torch.manual_seed(self.seed * 1_000_003 + self.current_epoch * 1_009 + self.global_rank)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.track("loss", loss, len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        reduce_sum = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        for name, mean in self.train_means.compute(reduce_sum).items():
            self.log(f"train/{name}", mean)

    def _eval_step(self, batch, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)
        metric.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self.test_acc)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute().item()   # all-reduced across ranks
        self.val_acc.reset()
        if self.trainer.sanity_checking:
            return
        if acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = acc, self.current_epoch
        self.log("val/acc", acc)
        self.log("best/val/acc", self.best_val_acc)
        self.log("best/epoch", float(self.best_epoch))

    def on_test_epoch_end(self) -> None:
        self.log("test/acc", self.test_acc.compute().item())
        self.test_acc.reset()

    def configure_optimizers(self):
        # the model and any heads a subclass adds
        return optimizer_config(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["divlab"] = {"format": CHECKPOINT_FORMAT, "kind": "lightning", "task": self.task_name,
                                "num_classes": int(self.model.num_classes),
                                "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("divlab", {})
        self.best_val_acc = meta.get("best_val_acc", float("-inf"))
        self.best_epoch = meta.get("best_epoch", -1)
