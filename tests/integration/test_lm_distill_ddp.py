"""task=lm_distill under DDP: two CPU ranks (ddp_spawn, gloo) at batch B/2 each train as one process at batch B.

The training rows are dealt by the data module's DistributedSampler (one permutation, rank r takes every
other row, so step k of the two ranks covers step k's rows of one process), the cached teacher states are
looked up by each row's "index", and the task rescales each rank's token mean by its share of the step's
tokens (LMDistillTask.global_token_mean), so the averaged gradient is that of the one-process batch."""

import pytest

from divlab.runner import run

pytest.importorskip("transformers")

KEYS = ("train/loss", "train/kd", "val/loss", "val/kd", "test/nll", "test/nll_teacher_resp")


@pytest.fixture
def tiny_lmkd(tiny_lmkd_base):
    """conftest's tiny_lmkd_base with the exact cached teacher and every train/validation/test batch."""
    return [
        *tiny_lmkd_base,
        "lm_distill.teacher_outputs=cached",
        "trainer.limit_train_batches=1.0",
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
    ]


def test_two_ranks_equal_one_rank_at_the_same_global_batch(compose_cfg, tiny_lmkd, outputs):
    one = run(compose_cfg(*tiny_lmkd, "trainer=cpu", "data.datamodule.batch_size=4"))
    states = sorted((outputs / "teacher_states").glob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in states]
    assert len(states) == 2  # train and val, computed once by the first run
    two = run(compose_cfg(*tiny_lmkd, "trainer=ddp_sim", "data.datamodule.batch_size=2"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_step"] == two["global_step"] == 4  # 16 rows: 4 steps of 4, or of 2 x 2
    # the ranks read the same cache (a row looked up under the wrong index fails on its position count)
    assert [
        f.stat().st_mtime_ns for f in sorted((outputs / "teacher_states").glob("*.safetensors"))
    ] == stamps
    assert one["metrics"]["train/kd"] > 0
    for key in KEYS:
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=2e-4, abs=1e-6), key
