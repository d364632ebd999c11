"""Issue 15, item 6: a run killed (SIGKILL) at a random epoch and run again resumes from the last finished epoch
(last.ckpt is written every epoch), ends with exactly the metrics of an uninterrupted run, and its csv/metrics.csv
holds the whole history: every row of the uninterrupted run, once, in order."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

EPOCHS = 5
ARGS = [
    "experiment=kd/digits_ce",
    "debug=fast",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.limit_train_batches=6",
    "trainer.log_every_n_steps=2",  # step rows too, not only epoch rows
]
EPOCH_KEYS = ("train/loss", "val/acc", "val/loss")  # the epoch-level metrics kd/digits_ce logs


def command(output_root: Path, teacher_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "divlab",
        *ARGS,
        f"paths.output_root={output_root}",
        f"paths.teacher_dir={teacher_dir}",
        "print_config=false",
    ]


def start(output_root: Path, teacher_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "a") as out:
        return subprocess.Popen(
            command(output_root, teacher_dir), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )


def finish(proc: subprocess.Popen, log: Path) -> dict:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    return json.loads(next(log.parent.glob("*/classify/*/*/seed0/metrics.json")).read_text())


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch of last.ckpt, None while it does not exist (or is being replaced)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return None


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged(run_dir: Path, key: str, epoch: int) -> bool:
    try:
        return any(r.get(key) and int(r["epoch"]) == epoch for r in rows(run_dir))
    except (OSError, KeyError, ValueError):
        return False


def test_killed_run_resumes_from_its_last_epoch_with_the_same_metrics_and_full_history(tmp_path, teacher_dir):
    epoch = random.Random(15).randint(1, EPOCHS - 2)  # kill once last.ckpt of this epoch exists
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir(), killed_dir.mkdir()
    uninterrupted = start(straight_dir / "out", teacher_dir, straight_dir / "log")  # alongside, to save time
    log = killed_dir / "log"
    proc = start(killed_dir / "out", teacher_dir, log)
    seen, deadline = None, time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        found = list((killed_dir / "out").glob("classify/*/*/seed0/checkpoints/last.ckpt"))
        seen = checkpoint_epoch(found[0]) if found else None
        # Lightning logs an epoch's train/* means just after its last.ckpt: kill once they are written too
        if seen is not None and seen >= epoch and logged(found[0].parents[1], "train/loss", seen):
            # freeze the run and look again: the next epoch may have logged its validation row (before its
            # last.ckpt) while we read; kill only at an epoch boundary, else let it go on
            os.kill(proc.pid, signal.SIGSTOP)
            now = checkpoint_epoch(found[0])
            validated = {int(r["epoch"]) for r in rows(found[0].parents[1]) if r["val/acc"]}
            if now is not None and now == max(validated) and logged(found[0].parents[1], "train/loss", now):
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before last.ckpt of epoch {epoch}: {seen}"
    run_dir = next((killed_dir / "out").glob("classify/*/*/seed0"))
    assert not (run_dir / "metrics.json").exists()
    done = {int(r["epoch"]) for r in rows(run_dir) if r["val/acc"]}  # epochs validated before the kill
    assert checkpoint_epoch(run_dir / "checkpoints" / "last.ckpt") == max(done), (
        "last.ckpt is not the last epoch"
    )

    resumed = finish(start(killed_dir / "out", teacher_dir, log), log)
    straight = finish(uninterrupted, straight_dir / "log")
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["metrics"] == straight["metrics"] and resumed["global_step"] == straight["global_step"]
    history, reference = rows(run_dir), rows(Path(straight["run_dir"]))
    for key in EPOCH_KEYS:
        epochs = [int(r["epoch"]) for r in history if r[key]]
        assert epochs == list(range(EPOCHS)), f"{key}: one row per epoch expected, got epochs {epochs}"
    assert history == reference  # every row of the uninterrupted run, with the same values, none twice
