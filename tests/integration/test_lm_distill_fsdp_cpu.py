"""trainer=fsdp's sharding logic (divlab.models.hf.sharding.ShardedHFStrategy) on two CPU ranks: FSDP runs on
gloo, so with the strategy's GPU requirement lifted (CPUShardedHFStrategy below, for this test only) task=lm_distill
trains with the student and the frozen teacher sharded block by block, and at batch B/2 per rank equals one
process at batch B; its checkpoint holds the student and no teacher. The ranks are separate processes (Lightning
starts the command line again per rank), so the run goes through the CLI."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed.fsdp
from lightning.pytorch.strategies import FSDPStrategy

from divlab.models.hf.sharding import ShardedHFStrategy

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

KEYS = ("train/loss", "train/kd", "val/loss", "test/nll")


class CPUShardedHFStrategy(ShardedHFStrategy):
    """ShardedHFStrategy without its refusal of a CPU accelerator (FSDP itself runs on gloo)."""

    def _configure_launcher(self) -> None:
        FSDPStrategy._configure_launcher(self)

    def _setup_model(self, model):
        import torch.distributed.fsdp as fsdp

        original = fsdp.FullyShardedDataParallel
        fsdp.FullyShardedDataParallel = OnCPU  # one class for every setup: isinstance finds earlier units
        try:
            return super()._setup_model(model)
        finally:
            fsdp.FullyShardedDataParallel = original


FSDP = torch.distributed.fsdp.FullyShardedDataParallel


class _AnyFSDP(type):
    def __instancecheck__(cls, obj) -> bool:  # the nested units FSDP's auto-wrap makes are plain FSDP
        return FSDP in type(obj).__mro__


class OnCPU(FSDP, metaclass=_AnyFSDP):
    """FSDP on the CPU device (Lightning passes device_id=None for a CPU root device, which FSDP refuses)."""

    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu"), **kwargs)


def tiny(base: list[str], name: str) -> list[str]:
    return [*base, f"experiment_name={name}", "trainer.max_epochs=1"]


def test_fsdp_on_two_cpu_ranks_equals_one_process(run_cli, tiny_lmkd_base, outputs, monkeypatch):
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    one = run_cli(*tiny(tiny_lmkd_base, "one"), "trainer=cpu", "data.datamodule.batch_size=4")
    assert one.returncode == 0, one.stderr[-3000:]
    sharded = run_cli(
        *tiny(tiny_lmkd_base, "fsdp"),
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
        "trainer.strategy._target_=test_lm_distill_fsdp_cpu.CPUShardedHFStrategy",
        "data.datamodule.batch_size=2",
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    records = {
        name: json.loads(next(outputs.glob(f"lm_distill/{name}/*/seed0/metrics.json")).read_text())
        for name in ("one", "fsdp")
    }
    assert (records["one"]["world_size"], records["fsdp"]["world_size"]) == (1, 2)
    assert records["one"]["global_step"] == records["fsdp"]["global_step"] == 4
    for key in KEYS:
        assert records["fsdp"]["metrics"][key] == pytest.approx(records["one"]["metrics"][key], rel=2e-4), key
    fsdp_ckpt, one_ckpt = (Path(records[k]["run_dir"]) / "checkpoints" / "last.ckpt" for k in ("fsdp", "one"))
    state = torch.load(fsdp_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("sharded_") for k in state)  # the frozen teacher is not saved
    reference = torch.load(one_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert set(state) == set(reference)
