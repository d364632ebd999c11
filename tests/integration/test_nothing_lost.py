"""Issue 15, nothing lost and nothing silent: non-booleans never delete a finished run, a diverged run is
recorded as failed, bad input leaves no run directory, a run directory in use is left alone, and a
corrupt metrics.json names itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from divlab.errors import ConfigError
from divlab.runner import run, run_directory
from divlab.tables.cells import Job, _read_state
from divlab.utils.rundir import TrainingDiverged, run_lock


@pytest.fixture
def finished(compose_cfg) -> Path:
    return Path(run(compose_cfg("experiment=kd/digits_ce"))["run_dir"])


@pytest.mark.parametrize("value", ["no", "yes", "maybe", "0"])
def test_rerun_that_is_not_a_boolean_keeps_the_finished_run(compose_cfg, finished, monkeypatch, value):
    import lightning.pytorch as pl

    before = (finished / "metrics.json").read_text()
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    with pytest.raises(ConfigError, match=rf"^rerun must be true or false, got '?{value}'?$"):
        run(compose_cfg("experiment=kd/digits_ce", f"rerun={value}"))
    assert (finished / "metrics.json").read_text() == before


def test_diverged_run_is_recorded_as_failed_and_the_table_shows_it(compose_cfg):
    cfg = compose_cfg("experiment=kd/digits", "optimizer.lr=1e30")
    with pytest.raises(
        TrainingDiverged,
        match=r"^training diverged at step \d+ \(epoch 0\): train/loss is (nan|inf); .*lower optimizer\.lr=1e\+30$",
    ):
        run(cfg)
    run_dir = Path(cfg.run_dir)
    assert not (run_dir / "metrics.json").exists()
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["type"] == "TrainingDiverged" and "diverged" in failed["error"]
    job = Job("r", "c", 0, [], run_dir=run_dir)
    _read_state(job, retry_failed=False)
    assert job.state == "failed" and "diverged" in job.error


@pytest.mark.parametrize(
    "overrides",
    [
        ["teacher.model.num_classes=7"],
        ["optimizer.lr=0"],
        ["data.datamodule.batch_size=0"],
        ["distill.t_squared=maybe"],
    ],
)
def test_bad_input_leaves_no_run_directory(compose_cfg, outputs, overrides):
    cfg = compose_cfg("experiment=kd/digits", *overrides)
    with pytest.raises(ConfigError):
        run(cfg)
    assert not list(outputs.glob("distill/**/config.yaml")) and not list(outputs.glob("distill/**/seed*"))


def test_run_directory_in_use_is_left_alone(compose_cfg, monkeypatch):
    import lightning.pytorch as pl

    cfg = compose_cfg("experiment=kd/digits_ce")
    run_dir = run_directory(cfg.copy())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from divlab.utils.rundir import run_lock\n"
                f"with run_lock(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("a second trainer started"))
        with pytest.raises(ConfigError, match=rf"^run .*seed0 is in progress in process {holder.pid}; wait"):
            run(cfg)
        assert not run_dir.exists()
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run_dir):  # the lock died with its process
        pass


def test_corrupt_metrics_json_names_the_file_and_the_table_shows_failed(compose_cfg, finished):
    (finished / "metrics.json").write_text('{"metrics": {"test/acc": 0.9')
    with pytest.raises(ConfigError, match=r"metrics\.json is corrupt .*rerun=true"):
        run(compose_cfg("experiment=kd/digits_ce"))
    job = Job("r", "c", 0, [], run_dir=finished)
    _read_state(job, retry_failed=False)
    assert job.state == "failed" and "rerun=true" in job.error
    record = run(compose_cfg("experiment=kd/digits_ce", "rerun=true"))
    assert record["metrics"]["test/acc"] >= 0


def test_cli_refuses_a_run_in_progress_in_one_sentence(run_cli, tmp_path, base_overrides, compose_cfg):
    cfg = compose_cfg("experiment=kd/digits_ce")
    run_dir = run_directory(cfg.copy())
    with run_lock(run_dir):
        done = run_cli("experiment=kd/digits_ce", "debug=fast")
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"error: run {run_dir} is in progress in process {os.getpid()}; "
        f"wait for it to finish (or stop it) and run again"
    )
    assert not run_dir.exists()


TABLE = """
import sys, threading, time
from pathlib import Path
from divlab.tables.cells import Job, Runner
runner = Runner(log_dir=Path(sys.argv[1]))
job = Job("r", "c", 0, sys.argv[2:], run_dir=Path(sys.argv[1]) / "run")
threading.Thread(target=runner.run_one, args=(job,), daemon=True).start()
while not runner._live:
    time.sleep(0.05)
print(next(iter(runner._live)).pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_table_takes_its_running_cell_with_it(tmp_path, base_overrides):
    import signal
    import time

    args = ["experiment=kd/digits_ce", "debug=fast", "trainer.max_epochs=500", *base_overrides]
    table = subprocess.Popen(
        [sys.executable, "-c", TABLE, str(tmp_path / "logs"), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    cell = int(table.stdout.readline())
    log = next(iter((tmp_path / "logs").glob("*.log")))
    deadline = time.time() + 120
    while "training classify" not in log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    assert alive(cell), log.read_text()[-2000:]
    os.kill(table.pid, signal.SIGKILL)
    table.wait()
    deadline = time.time() + 30
    while alive(cell) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(cell), "the table's cell outlived the table"


def test_last_checkpoint_is_written_every_epoch_even_without_improvement(compose_cfg):
    """lr=1e-12: validation accuracy never improves after epoch 0, yet last.ckpt is the final epoch's."""
    import torch

    record = run(compose_cfg("experiment=kd/digits_ce", "trainer.max_epochs=3", "optimizer.lr=1e-12"))
    path = Path(record["run_dir"]) / "checkpoints" / "last.ckpt"
    last = torch.load(path, weights_only=True, map_location="cpu")
    best = sorted((Path(record["run_dir"]) / "checkpoints").glob("best-*.ckpt"))
    assert last["epoch"] == 2 and [p.name for p in best] == ["best-epoch000.ckpt"]
