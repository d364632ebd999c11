"""The GPU trainer presets, run for real where torch sees a CUDA device (marked requires_gpu: skipped with the
reason elsewhere; on CPU-only machines test_compose checks that the same presets compose and ask for a GPU)."""

import pytest

from divlab.runner import run

pytestmark = pytest.mark.requires_gpu


@pytest.mark.parametrize(
    "overrides",
    [
        ("trainer=gpu",),
        ("trainer=gpu", "trainer.precision=bf16-mixed"),
        ("trainer=gpu", "compile=true"),
        ("trainer=ddp", "trainer.devices=1", "trainer.sync_batchnorm=false"),
        ("trainer=ddp_gpu", "trainer.devices=1"),
    ],
    ids=lambda o: " ".join(o),
)
def test_gpu_preset_trains_and_tests(compose_cfg, overrides):
    import torch

    record = run(compose_cfg("experiment=kd/digits_ce", *overrides))
    assert record["global_step"] > 0 and 0.0 <= record["metrics"]["test/acc"] <= 1.0
    assert torch.cuda.is_available()
