"""Run a paper table's missing cells, then write outputs/tables/<name>.{md,csv,tex,png}.

    python scripts/reproduce.py table=kd_digits                      # conf/table/kd_digits.yaml
    python scripts/reproduce.py table=kd_digits jobs=2               # two runs at a time
    python scripts/reproduce.py table=kd_digits seeds=0 debug=fast   # other words: overrides of every run
    python scripts/reproduce.py table=kd_digits dry_run=true         # list what would run, run nothing

Options: table=NAME (or a path to a .yaml), jobs=N (subprocesses at once, default 1), seeds=0,1,2
(instead of the table's), retry_failed=true (run cells that failed before again), dry_run=true.
Every other argument is a divlab override appended to every run (e.g. paths.output_root=DIR).

Each run is `python -m divlab <overrides>` in its own subprocess, so a crashing cell cannot stop the
others; its output goes to outputs/tables/<name>_logs/. A run whose directory has metrics.json is
not run again, so a second invocation runs nothing and rewrites the same tables, and a killed one
resumes. The tables are built from metrics.json files only.
"""

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from divlab.cli.conf_dir import conf_dir
from divlab.errors import ConfigError
from divlab.tables.cells import RUNS, Runner, plan, refresh, table_dir, to_run
from divlab.tables.render import cells_from_jobs, machine_line, run_time_line, write_all
from divlab.tables.spec import load_table

REPO = Path(__file__).resolve().parents[1]  # where the Makefile of a table's `setup` targets is
OPTIONS = ("table", "jobs", "seeds", "retry_failed", "dry_run")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"table": None, "jobs": 1, "seeds": None, "retry_failed": False, "dry_run": False}
    extra = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in OPTIONS:
            if key == "table":
                opts[key] = value
            elif key == "jobs":
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"jobs must be a positive integer, got {value!r}")
                opts[key] = int(value)
            elif key == "seeds":
                parts = [s.strip() for s in value.strip("[]").split(",") if s.strip()]
                if not parts or not all(p.isdigit() for p in parts):
                    raise ConfigError(
                        f"seeds must be a comma-separated list of integers such as seeds=0,1,2, got {value!r}"
                    )
                opts[key] = [int(p) for p in parts]
            else:
                if value.lower() not in TRUE + FALSE:
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
                opts[key] = value.lower() in TRUE
        elif arg in ("-m", "--multirun") or key == "seed":
            raise ConfigError(
                f"{arg} is not an option of reproduce.py: the table sets the seeds "
                f"(seeds=0,1,2 replaces them) and runs each cell itself"
            )
        else:
            extra.append(arg)
    if not opts["table"]:
        raise ConfigError("table must be given, e.g. table=kd_digits (a file of conf/table/)")
    return opts, extra


def progress(spec):
    def _say(job, k: int, n: int) -> None:
        where = f"[{k}/{n}] {job.row} | {job.column} | seed {job.seed}"
        metric = spec.metric_of(job.column)
        if job.state == "finished":
            value = job.record["metrics"].get(metric)
            shown = f"{metric}={value:.4f}" if isinstance(value, float) else f"no {metric} in metrics.json"
            print(f"{where}: {shown} ({job.seconds:.0f} s)", flush=True)
        else:
            print(
                f"{where}: {'failed: ' if job.state == 'failed' else ''}{job.error} ({job.seconds:.0f} s)",
                flush=True,
            )

    return _say


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    try:
        opts, extra = parse_args(sys.argv[1:] if argv is None else argv)
        conf = conf_dir()
        spec = load_table(opts["table"], conf)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    for (
        target
    ) in spec.setup:  # the data the table's runs read, installed once (the target skips what is there)
        if subprocess.run(["make", "-s", target], cwd=REPO).returncode != 0:
            print(
                f"error: `make {target}` (setup of table {spec.name}) failed; run it by hand", file=sys.stderr
            )
            return 2
    seeds = tuple(opts["seeds"] or spec.seeds)
    out_dir = table_dir(spec, conf_dir=conf, extra=extra)
    jobs = plan(spec, conf_dir=conf, seeds=seeds, extra=extra, retry_failed=opts["retry_failed"])
    todo = to_run(jobs)
    runs = [j for j in jobs if j.kind in RUNS]
    distinct = {j.run_dir for j in runs if j.run_dir is not None}
    done = {j.run_dir for j in runs if j.state == "finished"}
    failed = {j.run_dir or (j.row, j.column, j.seed) for j in runs if j.state == "failed"}
    at_once = f" ({opts['jobs']} at a time)" if todo and opts["jobs"] > 1 else ""
    print(
        f"table {spec.name}: {len(spec.rows)} rows x {len(spec.columns)} columns x {len(seeds)} seeds, "
        f"{len(distinct)} distinct runs: {len(done)} finished, {len(failed)} failed"
        f"{' (retry_failed=true runs them again)' if failed else ''}, {len(todo)} to run{at_once}",
        flush=True,
    )
    if opts["dry_run"]:
        for job in todo:
            print(f"  would run: python -m divlab {shlex.join(job.overrides)}")
        return 0

    runner = Runner(log_dir=out_dir / f"{spec.name}_logs", jobs=opts["jobs"])
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        runner.run(todo, on_done=progress(spec))
    except KeyboardInterrupt:
        print(
            f"interrupted: the runs that finished are kept; run the same command again to resume "
            f"(python scripts/reproduce.py {' '.join(sys.argv[1:] if argv is None else argv)})",
            file=sys.stderr,
            flush=True,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

    refresh(jobs)  # the tables are built from the files the runs left (and the teachers they trained)
    cells = cells_from_jobs(spec, jobs)
    paths = write_all(spec, cells, out_dir, seeds=seeds, machine=machine_line(), footer=run_time_line(jobs))
    print(paths[0].read_text())
    bad = sum(c.status in ("failed", "partial") for c in cells.values())
    print(
        f"wrote {', '.join(str(p) for p in paths)}"
        + (f"; {bad} cells with failed runs" if bad else "")
        + f" ({time.time() - start:.0f} s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
