"""What a run directory says about its run (issue 15): finished (metrics.json), failed (failed.json), in
progress (a lock held by the process training it), or diverged (a non-finite training loss stops the run).

  <hash>/.seed<k>.lock   an flock held while a process trains <hash>/seed<k>; beside the run directory, so
                         rerun=true can delete the directory while it is held. The file stays; the lock dies
                         with the process (also on SIGKILL), so a stale file never blocks a run.
  seed<k>/failed.json    {"error": one sentence, "type", "failed_at"}: written when the run fails after its
                         directory was made; a later successful run deletes it.
"""

import fcntl
import json
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from divlab.errors import ConfigError
from divlab.utils.io import atomic_write_json

FAILED = "failed.json"


def read_finished(metrics_path: Path) -> dict:
    """metrics.json of a finished run; a file that is not a divlab record fails in one sentence."""
    try:
        record = json.loads(Path(metrics_path).read_text())
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            raise ValueError("no metrics mapping")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{metrics_path} is corrupt ({type(e).__name__}); rerun=true trains the run again "
            f"(or delete the file)"
        ) from None
    return record


@contextmanager
def run_lock(run_dir: Path, *, enabled: bool = True):
    """Hold the run directory's lock for the block; another process holding it fails in one sentence."""
    if not enabled:
        yield
        return
    lock = Path(run_dir).parent / f".{Path(run_dir).name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"run {run_dir} is in progress in process {holder}; wait for it to finish (or stop "
                f"it) and run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """failed.json in a run directory that exists (the run got as far as making it)."""
    if not Path(run_dir).is_dir():
        return
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    atomic_write_json(
        Path(run_dir) / FAILED,
        {
            "error": (lines[-1] if lines else type(error).__name__)[:500],
            "type": type(error).__name__,
            "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


class TrainingDiverged(ConfigError):
    """The training loss became inf or nan; the message names the step, the term and the key to lower."""


def blame_key(cfg) -> str:
    """The setting most likely to make the loss blow up."""
    temperature = (cfg.get("distill") or {}).get("temperature")
    if temperature is not None and (temperature > 100 or temperature < 0.05):
        return f"distill.temperature={temperature:g}"
    lr = (cfg.get("optimizer") or {}).get("lr")
    return f"optimizer.lr={lr:g}" if isinstance(lr, (int, float)) else "optimizer.lr"


class FiniteLoss(Callback):
    """Stops training at the first step whose loss (or a logged train/ term) is inf or nan."""

    def __init__(self, *, blame: str):
        self.blame = blame  # the key the message tells the user to change

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        terms = {"train/loss": loss} if loss is not None else {}
        terms.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        for name, value in terms.items():
            value = float(value.detach().float().mean()) if hasattr(value, "detach") else float(value)
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                    f"{name} is {value}; the run is recorded as failed; lower {self.blame}"
                )
