"""Teacher-logit cache: computed once per (teacher, split), reused without calling the teacher, equal to
the teacher's logits, the same training as without it; off (and said once) on augmented data."""

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from divlab.errors import ConfigError
from divlab.models import SmallCNN
from divlab.provision.teacher import cached_teacher_path, load_weights, read_divlab_checkpoint
from divlab.runner import run
from divlab.tasks.teacher_logits import IndexedDataset, cache_enabled, compute_logits


def load_writer(name: str):
    """A file writer of tests/unit/test_data_modules.py (tests/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_data_modules.py"
    spec = importlib.util.spec_from_file_location("divlab_test_data_writers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


KD = ["experiment=kd/digits", "trainer.limit_train_batches=5"]


def test_cache_hit_on_the_second_run_matches_the_teacher_and_uncached_training(
    compose_cfg, tmp_path, monkeypatch, capsys
):
    teacher_dir = tmp_path / "teachers"  # not the session's: this test sees the cache file created
    kd = [*KD, f"paths.teacher_dir={teacher_dir}"]
    first = run(compose_cfg(*kd, "seed=0"))
    files = sorted((teacher_dir / "logits").glob("*.pt"))
    assert len(files) == 1 and "computed once and cached" in capsys.readouterr().out

    # the cached logits are the teacher's, in the order of the training split
    cfg = compose_cfg(*kd)
    teacher = instantiate(cfg.teacher.model)
    path = cached_teacher_path(cfg)
    load_weights(teacher, read_divlab_checkpoint(path, key="t"), key="teacher.checkpoint", path=path)
    dm = instantiate(cfg.data.datamodule, seed=0)
    dm.setup("fit")
    with torch.no_grad():
        expected = teacher.eval()(torch.stack([x for x, _ in dm._splits["train"]]))
    cached = torch.load(files[0], weights_only=True)["logits"]
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)

    # a second run (another seed, so another batch order) reads the file and never calls the teacher
    mtime = files[0].stat().st_mtime_ns
    real_forward = SmallCNN.forward

    def refuse(self, x):
        raise AssertionError("the teacher ran although its logits are cached")

    monkeypatch.setattr(SmallCNN, "forward", refuse)  # the digits_cnn teacher; the student is an MLP
    second = run(compose_cfg(*kd, "seed=1"))
    assert "teacher logits read from" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == mtime and sorted((teacher_dir / "logits").glob("*.pt")) == files
    monkeypatch.setattr(SmallCNN, "forward", real_forward)

    # index lookup under shuffling: the same training terms as with the teacher on every batch
    uncached = run(compose_cfg(*kd, "seed=1", "distill.cache_teacher_logits=false"))
    for key in ("train/kd", "train/ce", "train/loss", "val/acc"):
        assert second["metrics"][key] == pytest.approx(uncached["metrics"][key], rel=1e-5), key
    assert first["metrics"]["train/kd"] != second["metrics"]["train/kd"]  # another seed, another run


def test_indexed_dataset_and_logits_in_index_order():
    data = torch.utils.data.TensorDataset(torch.randn(7, 3), torch.arange(7))
    indexed = IndexedDataset(data)
    assert len(indexed) == 7 and indexed[4][2] == 4 and torch.equal(indexed[4][0], data[4][0])
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(compute_logits(net, data, batch_size=3), net(data.tensors[0]))


def test_augmented_data_turns_the_cache_off_once_or_fails_when_forced(compose_cfg, tmp_path, capsys):
    load_writer("write_cifar")(tmp_path / "data", 100)  # the writer of tests/unit/test_data_modules.py
    common = [
        "data=cifar100",
        f"data.datamodule.root={tmp_path / 'data'}",
        "data.datamodule.check_integrity=false",
        "data.datamodule.num_workers=0",
    ]
    cfg = compose_cfg(*common)
    dm = instantiate(cfg.data.datamodule, seed=0)
    assert cache_enabled(cfg, dm) is False
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("teacher-logit cache off: data=cifar100 augments")
    with pytest.raises(ConfigError, match="distill.cache_teacher_logits=true"):
        cache_enabled(compose_cfg(*common, "distill.cache_teacher_logits=true"), dm)
    unaugmented = instantiate(compose_cfg(*common, "data.datamodule.augment=false").data.datamodule, seed=0)
    assert cache_enabled(cfg, unaugmented) is True
    with pytest.raises(ConfigError, match="distill.cache_teacher_logits must be"):
        cache_enabled(compose_cfg(*common, "distill.cache_teacher_logits=yes"), dm)


@pytest.mark.slow
def test_cache_and_stage_heads_under_ddp_spawn(compose_cfg, tmp_path):
    """Two CPU ranks (ddp_spawn): each looks its shard's teacher logits up by index; the task pickles with
    its stage heads (hooks are attached in the ranks, not before)."""
    kd = [
        "experiment=kd/digits",
        "student=digits_cnn_small",
        "divergence=ofa",
        "distill.stages=auto",
        f"paths.teacher_dir={tmp_path / 'teachers'}",
    ]
    run(compose_cfg(*kd))  # builds the cache on one process
    record = run(compose_cfg(*kd, "trainer=ddp_sim", "seed=1"))
    assert record["world_size"] == 2 and record["metrics"]["train/stage_stage1"] > 0
