"""Provisioning of trained-once models: `pretrained` only freezes, and the recipe's builder is named, not known."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import divlab.provision.teacher as provision
from divlab.errors import ConfigError


def view(tmp_path, checkpoint, train=None):
    return OmegaConf.create(
        {
            "teacher": {
                "model": {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2},
                "checkpoint": checkpoint,
                "train": train or {"seed": 0},
            },
            "data": {"name": "x", "datamodule": {}},
            "paths": {"teacher_dir": str(tmp_path)},
            "trainer": {"accelerator": "cpu"},
        }
    )


def test_pretrained_is_frozen_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(
        provision, "train_teacher", lambda *a, **k: pytest.fail("a pretrained model was trained")
    )
    model = nn.Linear(3, 2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = provision.provision_teacher(view(tmp_path, "pretrained"), model)
    assert out is model and not out.training and not any(p.requires_grad for p in out.parameters())
    assert all(torch.equal(before[k], v) for k, v in out.state_dict().items())
    assert list(tmp_path.iterdir()) == []  # no cache written


def test_missing_builder_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"judge\.train\.builder is not set"):
        provision.teacher_builder(view(tmp_path, "auto").teacher.train, role="judge")
    bad = OmegaConf.create({"builder": "divlab.tasks.nowhere.build_teacher_task"})
    with pytest.raises(ConfigError, match=r"teacher\.train\.builder=divlab\.tasks\.nowhere"):
        provision.teacher_builder(bad, role="teacher")


def test_builder_is_resolved_by_name_and_not_hashed(tmp_path):
    from divlab.tasks.classify import build_teacher_task
    from divlab.utils.hashing import teacher_hash

    recipe = OmegaConf.create({"builder": "divlab.tasks.classify.build_teacher_task"})
    assert provision.teacher_builder(recipe, role="teacher") is build_teacher_task
    with_builder = view(tmp_path, "auto", {"seed": 0, "builder": "divlab.tasks.classify.build_teacher_task"})
    assert teacher_hash(with_builder) == teacher_hash(view(tmp_path, "auto", {"seed": 0}))
