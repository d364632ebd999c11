"""Supervised classification with cross-entropy. Trains teachers and CE-only baselines.

Accuracy metrics are correct under DDP; per-epoch reseeding, best-validation tracking that survives
a resume and the checkpoint metadata come from divlab.tasks.base.DivlabTask.
`build_teacher_task` is the `teacher.train.builder` of the classifier teachers (divlab.provision).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from divlab.tasks.base import DivlabTask, optimizer_config

__all__ = ["ClassifyTask", "build", "build_teacher_task", "optimization", "optimizer_config"]


def optimization(cfg: DictConfig) -> dict:
    """optimizer / scheduler factories and the seed of a run, as task keyword arguments."""
    from hydra.utils import instantiate

    return {
        "optimizer": instantiate(cfg.optimizer),
        "scheduler": instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        "seed": cfg.seed,
    }


def cosine_schedule(recipe: DictConfig):
    """The teacher recipes' schedule: cosine annealing over recipe.max_epochs, stepped per epoch."""
    import functools

    return functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=recipe.max_epochs)


def build_teacher_task(cfg: DictConfig, recipe: DictConfig):
    """teacher.train.builder of classifier teachers: (network to cache, ClassifyTask that trains it, metadata)."""
    from hydra.utils import instantiate

    model = instantiate(cfg.teacher.model)
    task = ClassifyTask(
        model=model,
        optimizer=instantiate(recipe.optimizer),
        scheduler=cosine_schedule(recipe),
        seed=recipe.seed,
        task_name="teacher",
    )
    return model, task, {"num_classes": int(model.num_classes)}


def build(cfg: DictConfig, *, datamodule=None) -> "ClassifyTask":
    """task.builder of task=classify: the student alone, trained with cross-entropy."""
    from divlab.utils.checks import build as build_spec
    from divlab.utils.checks import check_models_agree, check_takes_inputs

    student = build_spec(cfg.student.model)
    check_models_agree(data_classes=cfg.data.num_classes, student=student)
    check_takes_inputs(student, key="student.model", data=cfg.data)
    return ClassifyTask(model=student, **optimization(cfg))


class ClassifyTask(DivlabTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # the network being trained (student)
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
        seed: int = 0,  # reseeds torch at every epoch start
        task_name: str = "classify",
    ):  # recorded in checkpoints
        super().__init__(seed=seed, task_name=task_name, best_metric="val/acc", best_mode="max")
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        num_classes = model.num_classes
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    @property
    def best_val_acc(self) -> float:
        return self.best_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.track("loss", loss, len(y))
        return loss

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
        acc = self.val_acc.compute().item()  # all-reduced across ranks
        self.val_acc.reset()
        if self.trainer.sanity_checking:
            return
        self.log("val/acc", acc)
        self.update_best(acc)

    def on_test_epoch_end(self) -> None:
        self.log("test/acc", self.test_acc.compute().item())
        self.test_acc.reset()

    def configure_optimizers(self):
        # the model and any heads a subclass adds
        return optimizer_config(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    def checkpoint_meta(self) -> dict:
        return {"num_classes": int(self.model.num_classes)}
