"""Sweeps (-m) survive a failing job: the job's error is recorded and the sweep goes on.

A job whose config or training fails writes, into its Hydra job folder (<hydra.sweep.dir>/<job number>) and
into its run directory when it got one:
  failed.json   {"error": one sentence, "type", "overrides", "job", "run_dir", "failed_at"}
  error.txt     the full traceback
Under Hydra's basic sweeper the job then returns None and the next job starts; under any other sweeper
(Optuna) it raises SweepJobFailed, which the sweeper records as a failed trial (conf/hparams_search sets
hydra.sweeper.max_failure_rate so that failed trials do not stop the study). When the sweep is over,
FailureSummary lists the failed jobs and exits with status 1; a sweep without failures exits 0.
"""

import json
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from divlab.utils.io import atomic_write_json, atomic_write_text

FAILED = "failed.json"


class SweepJobFailed(RuntimeError):
    """A sweep job failed; its error is in failed.json / error.txt of its job folder."""


def one_sentence(error: BaseException) -> str:
    """The error's message on one line; of a multi-line message (a spawned rank's traceback) its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if len(lines) > 1 else " ".join(lines)) or type(error).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def record_failure(cfg: DictConfig, error: BaseException) -> list[Path]:
    """Write failed.json and error.txt for the current Hydra job; returns the folders written."""
    hc = HydraConfig.get()
    run_dir = cfg.get("run_dir")
    record = {
        "error": one_sentence(error),
        "type": type(error).__name__,
        "overrides": list(hc.overrides.task),
        "job": hc.job.num,
        "run_dir": run_dir,
        "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    folders = [Path(hc.runtime.output_dir)] + ([Path(run_dir)] if run_dir else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / FAILED, record)
        atomic_write_text(folder / "error.txt", text)
    return folders


def sweeper_wants_errors() -> bool:
    """True under a sweeper that reads job results (Optuna): it must see the failure to mark the trial."""
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return not target.endswith("BasicSweeper")


def failed_jobs(sweep_dir: Path) -> list[dict]:
    found = []
    for path in sorted(
        Path(sweep_dir).glob(f"*/{FAILED}"), key=lambda p: (len(p.parent.name), p.parent.name)
    ):
        found.append({**json.loads(path.read_text()), "file": str(path)})
    return found


class FailureSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): after a sweep, list its failed jobs and exit with status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = failed_jobs(Path(config.hydra.sweep.dir))
        if not failed:
            return
        lines = [f"error: {len(failed)} sweep job(s) failed; the others finished:"]
        lines += [
            f"  job {f['job']} ({' '.join(f['overrides'])}): {f['error']}  [{f['file']}]" for f in failed
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(1)
