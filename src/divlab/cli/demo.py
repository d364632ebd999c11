"""`make demo`: digits teacher, CE-only student and KD student, over a few seeds, as one table.

    python -m divlab.cli.demo [seeds=0,1,2] [any divlab override ...]

Runs are ordinary divlab runs (same run directories, so a second demo reuses them).
"""

import statistics
import sys

from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

from divlab.cli.conf_dir import conf_dir
from divlab.errors import ConfigError

ROWS = (("CE-only student", "experiment=kd/digits_ce"), ("KD student", "experiment=kd/digits"))


def parse_args(argv: list[str]) -> tuple[list[int], list[str]]:
    seeds, overrides = [0, 1, 2], []
    for arg in argv:
        if arg.startswith("seeds="):
            seeds = [int(s) for s in arg.split("=", 1)[1].split(",") if s]
        else:
            overrides.append(arg)
    return seeds, overrides


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def demo_table(rows: list[dict]) -> Table:
    """rows: {name, accs (list of test/acc), where}; accuracies shown in %."""
    table = Table(title="divlab demo: digits, test accuracy (%)")
    table.add_column("model")
    table.add_column("test acc, mean ± std", justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("per seed", justify="right")
    table.add_column("where")
    for row in rows:
        per_seed = " ".join(f"{100 * a:.2f}" for a in row["accs"])
        table.add_row(row["name"], mean_std(row["accs"]), str(len(row["accs"])), per_seed, row["where"])
    return table


def main(argv: list[str] | None = None) -> list[dict]:
    from divlab.provision.teacher import cached_teacher_path, teacher_record
    from divlab.runner import run

    seeds, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    rows, run_dirs = [], {}
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="demo"):
        base = ["print_config=false", "trainer.enable_progress_bar=false"]
        for name, experiment in ROWS:
            accs = []
            for seed in seeds:
                cfg = compose("train", overrides=[experiment, f"seed={seed}", *base, *overrides])
                try:
                    record = run(cfg)
                except ConfigError as e:
                    raise SystemExit(f"error: {e}") from None
                accs.append(record["metrics"]["test/acc"])
                run_dirs.setdefault(name, []).append(record["run_dir"])
            rows.append({"name": name, "accs": accs, "where": str(_common_parent(run_dirs[name]))})
        kd_cfg = compose("train", overrides=["experiment=kd/digits", *overrides])
        teacher = teacher_record(kd_cfg)
    teacher_acc = [teacher["metrics"]["test/acc"]] if teacher else []
    rows.insert(
        0,
        {
            "name": f"teacher ({kd_cfg.teacher.model._target_.rsplit('.', 1)[-1]})",
            "accs": teacher_acc,
            "where": str(cached_teacher_path(kd_cfg)),
        },
    )
    Console(width=200).print(demo_table(rows))
    ce, kd = (statistics.mean(r["accs"]) for r in rows[1:])
    print(f"KD - CE-only: {100 * (kd - ce):+.2f} points (mean over seeds {','.join(map(str, seeds))})")
    return rows


def _common_parent(paths: list[str]) -> str:
    import os

    return os.path.commonpath(paths) if len(paths) > 1 else paths[0]


if __name__ == "__main__":
    main()
