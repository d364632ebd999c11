"""The base of divlab's Lightning modules: what every task shares lives here, once.

    class MyTask(DivlabTask):
        def __init__(self, *, model, teacher, optimizer, seed=0):
            super().__init__(seed=seed, task_name="my_task", best_metric="val/acc", best_mode="max")
            self.model, self.optimizer_factory = model, optimizer
            self.hold_frozen("teacher", teacher)      # then self.frozen("teacher")

API (a subclass overrides a hook and calls super() where it adds to it):

- Epoch reseed. `on_train_epoch_start` calls `torch.manual_seed(epoch_seed(seed, epoch, rank))` with

      epoch_seed(seed, k, rank) = seed * 1_000_003 + k * 1_009 + rank

  so dropout and augmentation randomness depends on (seed, epoch, rank) only and a resumed run repeats
  the uninterrupted one on CPU. Tasks that reseed per optimiser step call `epoch_seed(seed, global_step,
  rank)` themselves and set `reseed_each_epoch = False`.
- Frozen models. `hold_frozen(name, module)` keeps a trained-once model (a teacher, a judge, an image
  scorer) outside the module tree: never in the optimiser, `state_dict` or checkpoint, not moved by
  Lightning; it is put in eval mode with `requires_grad_(False)` at once and moved to the task's device
  (still in eval) at fit, validation and test start. `self.frozen(name)` returns it (None may be held).
  Forward passes through it run under `torch.no_grad()` unless gradients must flow to its input.
- Training terms. `track(name, value, n)` adds a weighted term on the device (no host sync per step,
  unlike torchmetrics' MeanMetric whose per-update NaN check syncs); `on_train_epoch_end` all-reduces
  every term in one call and logs `train/<name>`.
- Best value. `update_best(value)` after a validation epoch (ignored while sanity checking) keeps the
  best `best_metric` value under `best_mode` and its epoch, and logs `best/<best_metric>` and
  `best/epoch`. Two floats, not torchmetrics' MaxMetric/MinMetric: the value is already all-reduced,
  and it must survive a resume (it is kept in the checkpoint metadata below).
- Checkpoint metadata. `on_save_checkpoint` writes `checkpoint["divlab"] = {"format": 1, "kind":
  "lightning", "task": task_name, "best_<metric with / as _>": best, "best_epoch": epoch,
  **self.checkpoint_meta()}`; a subclass overrides `checkpoint_meta()` to add keys (num_classes,
  vocab_size, tokenizer, ...). `on_load_checkpoint` restores the best value and epoch.
- `optimizer_config(params, optimizer_factory, scheduler_factory)`: what configure_optimizers returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn

from divlab.tasks.running_means import RunningMeans

CHECKPOINT_FORMAT = 1


def epoch_seed(seed: int, count: int, rank: int = 0) -> int:
    """The torch seed of epoch (or step) `count` on `rank`: seed * 1_000_003 + count * 1_009 + rank."""
    return int(seed) * 1_000_003 + int(count) * 1_009 + int(rank)


def optimizer_config(params, optimizer_factory: Callable, scheduler_factory: Callable | None):
    """What configure_optimizers returns: the optimiser over params, and its scheduler stepped per epoch."""
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler_factory(optimizer), "interval": "epoch"},
    }


def freeze(model: nn.Module) -> nn.Module:
    """eval mode and no gradients, in place."""
    return model.eval().requires_grad_(False)


class DivlabTask(pl.LightningModule):
    reseed_each_epoch = True  # False: the subclass reseeds itself (e.g. per optimiser step)

    def __init__(
        self,
        *,
        seed: int = 0,  # reseeds torch at every epoch start
        task_name: str = "task",  # recorded in checkpoints
        best_metric: str | None = None,  # the validation metric whose best value is tracked
        best_mode: str = "max",
    ):  # max | min
        super().__init__()
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be max or min, got {best_mode!r}")
        self.seed, self.task_name = seed, task_name
        self.best_metric, self.best_mode = best_metric, best_mode
        self.best_value = -math.inf if best_mode == "max" else math.inf
        self.best_epoch = -1
        self.train_means = RunningMeans()  # per-epoch means of training terms, logged at epoch end
        self._frozen: dict[str, nn.Module | None] = {}  # a plain dict: not registered as submodules

    # ------------------------------------------------------------------ frozen models
    def hold_frozen(self, name: str, module: nn.Module | None) -> None:
        self._frozen[name] = freeze(module) if isinstance(module, nn.Module) else module

    def frozen(self, name: str):
        return self._frozen[name]

    def move_frozen(self) -> None:
        for module in self._frozen.values():
            if isinstance(module, nn.Module):
                module.to(self.device).eval()
            elif hasattr(module, "to"):  # e.g. an image scorer that holds a classifier
                module.to(self.device)

    def on_fit_start(self) -> None:
        self.move_frozen()

    def on_validation_start(self) -> None:
        self.move_frozen()

    def on_test_start(self) -> None:
        self.move_frozen()

    # ------------------------------------------------------------------ reseed and training terms
    def on_train_epoch_start(self) -> None:
        if self.reseed_each_epoch:
            torch.manual_seed(epoch_seed(self.seed, self.current_epoch, self.global_rank))

    def track(self, name: str, value: torch.Tensor, n) -> None:
        """Accumulate a training term; cheaper per step than self.log, and all-reduced at epoch end."""
        self.train_means.update(name, value, n)

    def train_term_means(self) -> dict[str, torch.Tensor]:
        reduce_sum = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        return self.train_means.compute(reduce_sum)

    def on_train_epoch_end(self) -> None:
        for name, mean in self.train_term_means().items():
            self.log(f"train/{name}", mean)

    # ------------------------------------------------------------------ best value
    def update_best(self, value: float) -> None:
        """Keep and log the best value of `best_metric` (not while sanity checking)."""
        if self.trainer.sanity_checking:
            return
        value = float(value)
        better = value > self.best_value if self.best_mode == "max" else value < self.best_value
        if better:
            self.best_value, self.best_epoch = value, self.current_epoch
        self.log(f"best/{self.best_metric}", self.best_value)
        self.log("best/epoch", float(self.best_epoch))

    def best_key(self) -> str:
        return "best_" + str(self.best_metric).replace("/", "_")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        """Extra keys of the checkpoint's divlab metadata (a subclass adds its own)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        meta = {"format": CHECKPOINT_FORMAT, "kind": "lightning", "task": self.task_name}
        if self.best_metric is not None:
            meta.update({self.best_key(): self.best_value, "best_epoch": self.best_epoch})
        checkpoint["divlab"] = {**meta, **self.checkpoint_meta()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("divlab", {})
        if self.best_metric is not None:
            self.best_value = meta.get(self.best_key(), self.best_value)
            self.best_epoch = meta.get("best_epoch", -1)
