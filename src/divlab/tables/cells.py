"""A table's grid as runs: expand (row, column, seed), find each run directory, run the missing ones.

A run is finished when its run directory holds metrics.json (the runner writes it last, atomically),
so a killed table resumes with the runs that have none. A run whose `python -m divlab` exited with an
error leaves `<run_dir>/failed.json` (its first error line); it is shown as failed and not retried
unless asked (`retry_failed`). A run killed by a signal, or stopped with the script, leaves no such
file and runs again (resuming from its last.ckpt).
"""

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from divlab.errors import ConfigError
from divlab.tables.spec import TableSpec
from divlab.utils.io import atomic_write_json, read_json
from divlab.utils.rundir import read_finished

# Appended before the user's overrides: runs started by the table print one line, not a config tree.
QUIET = ("print_config=false", "trainer.enable_progress_bar=false")
INTERRUPTED = (130, 137, 143)  # shell codes of SIGINT, SIGKILL, SIGTERM


@dataclass
class Job:
    """One (row, column, seed) of a table and what is known about its run."""

    row: str
    column: str
    seed: int
    overrides: list[str]  # the whole `python -m divlab` command line after `-m divlab`
    kind: str = "run"  # run | teacher (reads the cached teacher, never trains) | reference (one seed)
    run_dir: Path | None = None
    state: str = "missing"  # finished | failed | missing
    record: dict | None = None  # metrics.json (or the teacher's sidecar) when finished
    error: str | None = None  # first error line when failed
    ran: bool = False  # run by this invocation
    seconds: float | None = None  # its wall time, when run by this invocation
    cfg: object = None  # the composed config of a teacher row (to find its cached teacher)


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def first_error_line(output: str, returncode: int) -> str:
    """divlab's `error: <sentence>`, else the exception line of a traceback, else the exit code."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error: "):
            return line[len("error: ") :]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)(:|$)", line):
            return line
    return f"python -m divlab exited with code {returncode}"


def _read_state(job: Job, retry_failed: bool) -> None:
    metrics, failed = job.run_dir / "metrics.json", job.run_dir / "failed.json"
    if metrics.is_file():
        try:
            job.state, job.record, job.error = "finished", read_finished(metrics), None
        except ConfigError as e:  # a corrupt metrics.json: this cell fails, the table goes on
            job.state, job.record, job.error = "failed", None, str(e)
    elif failed.is_file() and not retry_failed:
        job.state, job.error = "failed", read_json(failed).get("error", "failed")
    else:
        job.state = "missing"


def plan(spec: TableSpec, *, conf_dir: str, seeds=None, extra=(), retry_failed: bool = False) -> list[Job]:
    """Every job of the table and its state. Nothing trains: each cell is composed once (seed is not
    part of the config hash, so the other seeds' run directories follow from the same config)."""
    from divlab.runner import run_directory

    seeds = tuple(seeds) if seeds else spec.seeds
    jobs, composed = [], {}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="table"):
            for row in spec.rows:
                for column in spec.columns:
                    base = spec.overrides(row, column)
                    command = lambda seed, base=base: [*base, f"seed={seed}", *QUIET, *extra]  # noqa: E731
                    key = tuple(base)
                    if key not in composed:  # columns that only pick a metric share one composition
                        try:
                            composed[key] = (compose("train", overrides=command(seeds[0])), None)
                        except Exception as e:  # an override that does not compose: the cell fails here
                            composed[key] = (None, f"config does not compose: {first_line(e)}")
                    cfg, error = composed[key]
                    cfg = cfg.copy() if cfg is not None else None
                    for seed in seeds[:1] if row.kind in ("teacher", "reference") else seeds:
                        job = Job(row.name, column.name, seed, command(seed), kind=row.kind)
                        jobs.append(job)
                        if cfg is None:
                            job.state, job.error = "failed", error
                        elif row.kind == "teacher":
                            job.cfg = cfg
                        else:
                            cfg.seed = seed
                            try:
                                job.run_dir = run_directory(cfg)
                            except Exception as e:  # e.g. an interpolation that does not resolve
                                job.state, job.error = "failed", f"config does not resolve: {first_line(e)}"
    finally:
        GlobalHydra.instance().clear()
    return refresh(jobs, retry_failed=retry_failed)


def refresh(jobs: list[Job], *, retry_failed: bool = False) -> list[Job]:
    """Read each job's state from the files its run left (metrics.json, failed.json, the teacher's)."""
    from divlab.provision.teacher import teacher_record

    for job in jobs:
        if job.kind == "teacher" and job.cfg is not None:
            job.record = teacher_record(job.cfg)
            job.state = "finished" if job.record else "missing"
            job.error = None if job.record else "no cached teacher yet (the table's distill runs train it)"
        elif job.run_dir is not None:
            _read_state(job, retry_failed)
    return jobs


def table_dir(spec: TableSpec, *, conf_dir: str, extra=()) -> Path:
    """`paths.table_dir` of the composed config (outputs/tables unless paths.* say otherwise)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="table"):
            overrides = [o for o in extra if o.split("=", 1)[0].lstrip("+~").startswith("paths.")]
            return Path(compose("train", overrides=overrides).paths.table_dir)
    finally:
        GlobalHydra.instance().clear()


RUNS = ("run", "reference")  # kinds of job that run a config (a teacher row reads the teacher cache)


def to_run(jobs: list[Job]) -> list[Job]:
    """Missing runs, one job per run directory (cells that share a run, e.g. a CE-only row whose
    columns differ only in the teacher it does not use, run it once)."""
    seen, out = set(), []
    for job in jobs:
        if job.kind in RUNS and job.state == "missing" and job.run_dir not in seen:
            seen.add(job.run_dir)
            out.append(job)
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("->", "to")).strip("_") or "x"


class Runner:
    """Runs `python -m divlab` for each job, `jobs` at a time, each in its own subprocess."""

    def __init__(self, *, log_dir: Path, jobs: int = 1, python: str = sys.executable, say=print):
        self.log_dir, self.jobs, self.python, self.say = Path(log_dir), max(1, int(jobs)), python, say
        self.stopping = threading.Event()
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def env(self) -> dict:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DIVLAB_JOBS": str(self.jobs),  # for threads=auto
            "DIVLAB_PARENT_PID": str(os.getpid()),
        }  # the run dies with the table (divlab.cli.train)
        if self.jobs > 1:  # parallel runs share the cores instead of each taking all of them
            threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(var, threads)
        return env

    def run_one(self, job: Job) -> Job:
        log = self.log_dir / f"{slug(job.row)}__{slug(job.column)}__seed{job.seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as out:
            out.write(f"$ {self.python} -m divlab {' '.join(job.overrides)}\n")
            out.flush()
            with self._lock:
                if self.stopping.is_set():
                    return job
                proc = subprocess.Popen(
                    [self.python, "-m", "divlab", *job.overrides],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                )
                self._live.add(proc)
            proc.wait()
            with self._lock:
                self._live.discard(proc)
        job.ran, job.seconds, rc = True, time.time() - start, proc.returncode
        if rc == 0 and (job.run_dir / "metrics.json").is_file():
            (job.run_dir / "failed.json").unlink(missing_ok=True)
            _read_state(job, retry_failed=True)
        elif rc < 0 or rc in INTERRUPTED or self.stopping.is_set():
            # killed by a signal, or stopped with the script: no record, so it runs again next time
            job.state = "missing"
            job.error = f"interrupted (exit code {rc}); it runs again next time"
        else:
            job.state = "failed"
            job.error = (
                first_error_line(log.read_text(errors="replace"), rc)
                if rc
                else "the run ended without writing metrics.json"
            )
            atomic_write_json(
                job.run_dir / "failed.json",
                {
                    "error": job.error,
                    "returncode": rc,
                    "log": str(log),
                    "overrides": job.overrides,
                    "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
        return job

    def run(self, jobs: list[Job], on_done=None) -> list[Job]:
        """Run every job; on_done(job, k, n) after each. Ctrl-C stops the subprocesses and re-raises."""
        n = len(jobs)
        if not n:
            return jobs
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            futures = [pool.submit(self.run_one, job) for job in jobs]
            for k, future in enumerate(as_completed(futures), 1):
                job = future.result()
                if on_done:
                    on_done(job, k, n)
        except BaseException:
            self.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return jobs

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            for proc in self._live:
                if proc.poll() is None:
                    proc.terminate()
