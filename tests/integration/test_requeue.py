"""Resume and requeue: Lightning owns SLURM requeue (SIGUSR1 -> hpc checkpoint in the run directory ->
`scontrol requeue`), the requeued run resumes from that checkpoint, and a wandb run keeps its id."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from divlab.runner import resume_checkpoint, run


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while not predicate():
        if proc.poll() is not None and not predicate():
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before the expected file appeared:\n"
                f"{proc.stdout.read()[-3000:]}"
            )
        if time.time() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def test_sigusr1_saves_hpc_checkpoint_requeues_and_the_rerun_resumes_from_it(
    tmp_path, base_overrides, outputs
):
    bin_dir = tmp_path / "bin"  # a fake scontrol: records what it was asked, then ends the job as SLURM would
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -9 $PPID\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "divlab-test",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    args = [
        sys.executable,
        "-m",
        "divlab",
        "experiment=kd/digits_ce",
        "debug=fast",
        "trainer.max_epochs=40",
        "trainer.limit_val_batches=1",
        *base_overrides,
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: any(outputs.rglob("last.ckpt")), 180, proc)  # fitting, so Lightning's handler is set
        (last,) = outputs.rglob("last.ckpt")
        run_dir = last.parent.parent
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: calls.exists() and any(run_dir.glob("hpc_ckpt_*.ckpt")), 60, proc)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert calls.read_text().split() == ["requeue", "4242"]
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert resume_checkpoint(run_dir) == hpc
    assert not (run_dir / "metrics.json").exists()

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {hpc}" in rerun.stdout and (run_dir / "metrics.json").is_file()


def test_rerun_of_a_killed_run_resumes_from_the_newest_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    assert resume_checkpoint(run_dir) is None
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert resume_checkpoint(run_dir) == last
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert resume_checkpoint(run_dir) == hpc
    os.utime(hpc, (time.time() - 120, time.time() - 120))
    assert resume_checkpoint(run_dir) == last


def test_slurm_launcher_sends_sigusr1_not_submitits_signal(compose_cfg):
    """launcher=slurm replaces submitit's --signal=USR2 (its own requeue) with USR1 (Lightning's)."""
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_cfg("launcher=slurm", "experiment=kd/digits", hydra=True)
    launcher = cfg.hydra.launcher
    sbatch = _make_sbatch_string(
        command="python -m divlab",
        folder="/tmp/x",
        signal_delay_s=launcher.signal_delay_s,
        additional_parameters=dict(launcher.additional_parameters),
    )
    signals = [line for line in sbatch.splitlines() if "--signal" in line]
    assert signals == ["#SBATCH --signal=USR1@120"] and launcher.max_num_timeout == 0


def test_wandb_run_id_is_kept_in_the_run_directory_and_reused_on_resume(compose_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("experiment=kd/digits_ce", "logger=wandb")
    record = run(cfg)
    run_dir = Path(record["run_dir"])
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert len(run_id) == 8
    (run_dir / "metrics.json").unlink()  # as if killed after its last epoch: the rerun resumes
    record = run(compose_cfg("experiment=kd/digits_ce", "logger=wandb"))
    assert record["resumed_from"] and (run_dir / "wandb_id.txt").read_text().strip() == run_id
    offline_runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(name.endswith(f"-{run_id}") for name in offline_runs)
