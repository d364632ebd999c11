"""`divlab` / `python -m divlab`: the Hydra entry point that trains one config (or a sweep with -m).

Single run: bad input exits with status 2 and one sentence (`error: ...`). Sweep (-m): a failing job is
recorded in its folder and the sweep goes on (divlab/cli/sweep.py); a config that no job of the sweep can
run (trainer.strategy=ddp under -m) still stops it with status 2. HYDRA_FULL_ERROR=1 shows Hydra's full
traceback for errors Hydra itself reports (an unknown group option, a bad override).
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from divlab.cli.conf_dir import conf_dir
from divlab.errors import ConfigError


def _result(cfg: DictConfig, record: dict) -> float | None:
    (Path(record["run_dir"]) / "failed.json").unlink(missing_ok=True)  # a rerun that now works
    if cfg.get("optimized_metric"):
        return record["metrics"][cfg.optimized_metric]
    return None


def _single(cfg: DictConfig) -> float | None:
    from divlab.runner import run

    try:
        record = run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    return _result(cfg, record)


def _sweep_job(cfg: DictConfig) -> float | None:
    from divlab.cli.sweep import SweepJobFailed, one_sentence, record_failure, sweeper_wants_errors
    from divlab.runner import run
    from divlab.utils.checks import check_strategy_under_multirun

    try:
        check_strategy_under_multirun(cfg)  # wrong for every job alike: stop the sweep
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        record = run(cfg)
    except Exception as e:  # recorded, and the sweep goes on
        folders = record_failure(cfg, e)
        print(
            f"error: {one_sentence(e)} (recorded in {folders[0] / 'failed.json'})",
            file=sys.stderr,
            flush=True,
        )
        if sweeper_wants_errors():
            raise SweepJobFailed(one_sentence(e)) from None
        return None
    return _result(cfg, record)


@hydra.main(config_path=conf_dir(), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from divlab.utils.checks import hydra_mode

    multirun, _ = hydra_mode()
    return _sweep_job(cfg) if multirun else _single(cfg)


def die_with_parent() -> None:
    """Started by a table (DIVLAB_PARENT_PID, set by divlab.tables.cells): die when the table dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG), so no orphaned run goes on training. The variable is dropped, so the
    processes this run starts (DDP ranks) are not tied to the table."""
    parent = os.environ.pop("DIVLAB_PARENT_PID", None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the table died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    die_with_parent()
    _main()


if __name__ == "__main__":
    main()
