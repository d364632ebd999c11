"""divlab.tasks.base.DivlabTask: frozen models stay out of the module tree, best values survive a checkpoint."""

import math
from types import SimpleNamespace

from torch import nn

from divlab.tasks.base import DivlabTask, epoch_seed


class Tiny(DivlabTask):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.model = nn.Linear(2, 2)


def test_epoch_seed_formula():
    assert epoch_seed(3, 5, 1) == 3 * 1_000_003 + 5 * 1_009 + 1
    assert len({epoch_seed(s, e, r) for s in range(3) for e in range(50) for r in range(4)}) == 600


def test_frozen_model_is_held_outside_the_module_tree():
    task, teacher = Tiny(), nn.Linear(2, 2).train()
    task.hold_frozen("teacher", teacher)
    assert task.frozen("teacher") is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not k.startswith("teacher") for k in task.state_dict())
    assert len(list(task.parameters())) == 2  # the model's weight and bias only


def test_best_value_is_tracked_and_restored(monkeypatch):
    task = Tiny(best_metric="val/loss", best_mode="min", task_name="tiny")
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value: logged.__setitem__(name, value))
    trainer = SimpleNamespace(sanity_checking=False)
    monkeypatch.setattr(Tiny, "trainer", property(lambda self: trainer))
    for epoch, value in enumerate((3.0, 1.0, 2.0)):
        monkeypatch.setattr(Tiny, "current_epoch", property(lambda self, e=epoch: e))
        task.update_best(value)
    assert (task.best_value, task.best_epoch) == (1.0, 1) and logged["best/val/loss"] == 1.0
    trainer.sanity_checking = True
    task.update_best(0.1)  # sanity check: not counted
    assert task.best_value == 1.0
    checkpoint = {}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["divlab"] == {
        "format": 1,
        "kind": "lightning",
        "task": "tiny",
        "best_val_loss": 1.0,
        "best_epoch": 1,
    }
    fresh = Tiny(best_metric="val/loss", best_mode="min")
    assert fresh.best_value == math.inf
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.best_value, fresh.best_epoch) == (1.0, 1)
