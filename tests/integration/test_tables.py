"""scripts/reproduce.py and divlab.tables: table configs, the grid's runs (resume, failed cells), renderers."""

import csv
import importlib.util
import json
import stat
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from divlab.errors import ConfigError
from divlab.tables import cells as cells_mod
from divlab.tables.cells import Job, Runner, first_error_line, plan
from divlab.tables.render import Cell, cell_text, cells_from_jobs, to_csv, to_latex, to_markdown, write_all
from divlab.tables.spec import Axis, TableSpec, latest, load_table

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script()

GRID = {
    "title": "test grid",
    "metric": "test/acc",
    "scale": 100,
    "seeds": [0],
    "common_overrides": ["experiment=kd/digits", "debug=fast"],
    "baseline_row": "CE",
    "rows": [
        {"name": "teacher", "kind": "teacher"},
        {"name": "CE", "overrides": ["experiment=kd/digits_ce"]},
        {"name": "KD", "overrides": ["divergence=forward_kl"]},
    ],
    "columns": [
        {"name": "CNN -> MLP", "overrides": ["student=digits_mlp"]},
        {"name": "CNN -> CNN-8", "overrides": ["student=digits_cnn_small"]},
    ],
    "reference": {"KD": {"CNN -> MLP": 97.25}},
}


def write_table(folder: Path, name: str, table: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(table)))
    return path


def metrics_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("metrics.json") if "teachers" not in p.parts}


def read_csv(path: Path) -> dict[tuple[str, str], dict]:
    with open(path) as f:
        return {(r["row"], r["column"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, teacher_dir):
    """The 2x2 grid (plus a teacher row), run once with two jobs at a time."""
    root = tmp_path_factory.mktemp("table")
    path = write_table(root, "grid", GRID)
    args = [f"table={path}", f"paths.output_root={root / 'outputs'}", f"paths.teacher_dir={teacher_dir}"]
    code = reproduce.main([*args, "jobs=2"])
    return {
        "root": root,
        "outputs": root / "outputs",
        "args": args,
        "path": path,
        "code": code,
        "tables": root / "outputs" / "tables",
    }


def test_grid_runs_every_cell_and_writes_four_files(grid):
    assert grid["code"] == 0
    assert len(metrics_files(grid["outputs"])) == 4
    for ext in ("md", "csv", "tex", "png"):
        assert (grid["tables"] / f"grid.{ext}").stat().st_size > 0
    rows = read_csv(grid["tables"] / "grid.csv")
    md = (grid["tables"] / "grid.md").read_text()
    for row in ("CE", "KD"):
        for column in ("CNN -> MLP", "CNN -> CNN-8"):
            r = rows[(row, column)]
            record = json.loads((Path(r["run_dirs"]) / "metrics.json").read_text())
            assert r["status"] == "ok" and r["n_seeds"] == "1"
            assert float(r["mean"]) == pytest.approx(100 * record["metrics"]["test/acc"])
            assert f"{float(r['mean']):.2f}" in md
    assert rows[("teacher", "CNN -> MLP")]["status"] == "ok"  # the teacher the KD runs trained
    assert float(rows[("KD", "CNN -> MLP")]["reference"]) == 97.25
    delta = float(rows[("KD", "CNN -> MLP")]["mean"]) - float(rows[("CE", "CNN -> MLP")]["mean"])
    assert float(rows[("KD", "CNN -> MLP")]["delta_vs_CE"]) == pytest.approx(delta)
    assert "| method | CNN -> MLP | Δ vs CE | published | CNN -> CNN-8 | Δ vs CE |" in md
    assert "97.25" in md and "Machine: " in md and "CPU cores" in md and "torch " in md
    assert r"\toprule" in (grid["tables"] / "grid.tex").read_text()
    assert (grid["tables"] / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_second_invocation_runs_nothing_and_rewrites_the_same_tables(grid, capsys):
    before = {p: p.stat().st_mtime_ns for p in metrics_files(grid["outputs"])}
    dirs = {p for p in grid["outputs"].rglob("seed*")}
    md, tex = (grid["tables"] / "grid.md").read_text(), (grid["tables"] / "grid.tex").read_text()
    capsys.readouterr()
    assert reproduce.main(grid["args"]) == 0
    out = capsys.readouterr().out
    assert "4 finished, 0 failed, 0 to run" in out and "[1/" not in out
    assert {p: p.stat().st_mtime_ns for p in metrics_files(grid["outputs"])} == before
    assert {p for p in grid["outputs"].rglob("seed*")} == dirs
    assert (grid["tables"] / "grid.md").read_text() == md and (grid["tables"] / "grid.tex").read_text() == tex


def test_interrupted_cell_alone_runs_again(grid, capsys):
    """A run killed before it wrote metrics.json (its last.ckpt kept): only that run is started, and resumes."""
    rows = read_csv(grid["tables"] / "grid.csv")
    victim = Path(rows[("KD", "CNN -> MLP")]["run_dirs"]) / "metrics.json"
    old = json.loads(victim.read_text())
    others = {p: p.stat().st_mtime_ns for p in metrics_files(grid["outputs"]) if p != victim}
    victim.unlink()
    capsys.readouterr()
    assert reproduce.main(grid["args"]) == 0
    out = capsys.readouterr().out
    assert "3 finished, 0 failed, 1 to run" in out
    assert "[1/1] KD | CNN -> MLP | seed 0: test/acc=" in out
    assert {p: p.stat().st_mtime_ns for p in metrics_files(grid["outputs"]) if p != victim} == others
    new = json.loads(victim.read_text())
    assert new["resumed_from"] and new["metrics"]["test/acc"] == old["metrics"]["test/acc"]


def test_failing_cell_shows_its_error_and_the_others_complete(grid, capsys):
    table = {
        **GRID,
        "rows": [{"name": "T=0", "overrides": ["distill.temperature=0"]}, GRID["rows"][2]],
        "columns": GRID["columns"][:1],
        "seeds": [1],
        "reference": {},
        "baseline_row": None,
    }
    args = [f"table={write_table(grid['root'], 'broken', table)}", *grid["args"][1:]]
    capsys.readouterr()
    assert reproduce.main([*args, "jobs=2"]) == 0
    out = capsys.readouterr().out
    assert "2 to run" in out  # T=0 and KD with seed 1, each in its own subprocess
    assert "seed 1: failed: distill.temperature must be a number > 0, got 0" in out
    rows = read_csv(grid["tables"] / "broken.csv")
    assert rows[("T=0", "CNN -> MLP")]["status"] == "failed"
    assert rows[("KD", "CNN -> MLP")]["status"] == "ok" and rows[("KD", "CNN -> MLP")]["seeds"] == "1"
    md = (grid["tables"] / "broken.md").read_text()
    assert "| T=0 | failed: distill.temperature must be a number > 0, got 0 |" in md
    log = next((grid["tables"] / "broken_logs").glob("T_0__*"))
    assert "error: distill.temperature" in log.read_text()
    capsys.readouterr()  # a failure is remembered: not retried unless asked
    assert reproduce.main(args) == 0
    assert "1 finished, 1 failed (retry_failed=true runs them again), 0 to run" in capsys.readouterr().out
    assert reproduce.main([*args, "retry_failed=true", "dry_run=true"]) == 0
    assert "1 to run" in capsys.readouterr().out


# ---- runs without training: fake `python` executables for the subprocess runner ----


def fake_python(folder: Path, body: str) -> str:
    path = folder / "python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_runner_records_a_crash_but_not_a_killed_run(tmp_path):
    crash = fake_python(
        tmp_path,
        'echo "Traceback (most recent call last):"; echo "RuntimeError: CUDA out of memory" >&2; exit 1',
    )
    job = Job("r", "c", 0, ["x=1"], run_dir=tmp_path / "run" / "seed0")
    Runner(log_dir=tmp_path / "logs", python=crash).run([job])
    assert job.state == "failed" and job.error == "RuntimeError: CUDA out of memory"
    assert json.loads((job.run_dir / "failed.json").read_text())["returncode"] == 1
    killed = fake_python(tmp_path, "kill -9 $$")
    job2 = Job("r", "c", 1, ["x=1"], run_dir=tmp_path / "run" / "seed1")
    Runner(log_dir=tmp_path / "logs", python=killed, jobs=2).run([job2])
    assert job2.state == "missing" and not (job2.run_dir / "failed.json").exists()


def test_first_error_line():
    assert (
        first_error_line("noise\nerror: seed must be a non-negative integer\n", 2)
        == "seed must be a non-negative integer"
    )
    text = "Traceback (most recent call last):\n  File x\nValueError: bad shape\nSet HYDRA_FULL_ERROR=1"
    assert first_error_line(text, 1) == "ValueError: bad shape"
    assert first_error_line("", 3) == "python -m divlab exited with code 3"


# ---- table configs ----


def test_kd_digits_table_plans_every_method_on_two_pairs(tmp_path, monkeypatch):
    spec = load_table("kd_digits", CONF)
    names = [r.name for r in spec.rows]
    for required in (
        "CE-only",
        "KD (forward KL)",
        "reverse KL",
        "JS",
        "TVD",
        "DKD",
        "PLD",
        "SinKD",
        "OFA",
        "Jeffreys",
        "squared Hellinger",
    ):
        assert required in names
    assert spec.seeds == (0, 1, 2) and spec.metric == "test/acc" and spec.baseline_row == "CE-only"
    assert len(spec.columns) >= 2
    monkeypatch.chdir(tmp_path)
    jobs = plan(spec, conf_dir=str(CONF), seeds=[0], extra=[f"paths.output_root={tmp_path}"])
    assert all(j.state == "missing" for j in jobs), [j.error for j in jobs if j.error and j.kind == "run"]
    runs = [j for j in jobs if j.kind == "run"]
    assert len({j.run_dir for j in runs}) == len(runs) == len(cells_mod.to_run(jobs))


def test_overrides_later_key_wins():
    assert latest(["experiment=a", "seed=1", "experiment=b", "+x=1", "+x=2"]) == [
        "seed=1",
        "experiment=b",
        "+x=1",
        "+x=2",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": None}, "metric must be set"),
        ({"rows": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"reference": {"nope": {"CNN -> MLP": 1.0}}}, "reference names row 'nope'"),
        ({"reference": {"KD": {"CNN -> MLP": "high"}}}, "must be a number"),
        ({"baseline_row": "nope"}, "baseline_row='nope' is not one of the rows"),
        ({"seeds": [-1]}, "seeds must be"),
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_bad_table_config_is_one_sentence(tmp_path, change, message):
    path = write_table(tmp_path, "bad", {**GRID, **change})
    with pytest.raises(ConfigError, match=message):
        load_table(str(path), CONF)


def test_unknown_table_and_bad_options_exit_2(capsys):
    assert reproduce.main(["table=no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "error: table=no_such_table is not a table config" in err and "kd_digits" in err
    assert reproduce.main(["table=kd_digits", "jobs=0"]) == 2
    assert reproduce.main(["table=kd_digits", "seed=1"]) == 2
    assert "seeds=0,1,2" in capsys.readouterr().err


# ---- renderers on hand-made records ----


def hand_made():
    spec = TableSpec(
        name="hand",
        metric="test/acc",
        scale=100,
        seeds=(0, 1, 2),
        baseline_row="CE",
        rows=(Axis("CE"), Axis("KD"), Axis("OFA_x"), Axis("half")),
        columns=(Axis("A -> B"), Axis("C")),
        reference={("KD", "A -> B"): 98.1},
    )

    def job(row, column, seed, acc=None, error=None):
        j = Job(row, column, seed, [], run_dir=Path(f"/runs/{row}/{column}/seed{seed}"))
        j.state, j.record, j.error = (
            ("finished", {"metrics": {"test/acc": acc}}, None) if acc is not None else ("failed", None, error)
        )
        return j

    jobs = [
        job(r, c, s, acc=a)
        for (r, accs) in (("CE", (0.97, 0.98, 0.99)), ("KD", (0.98, 0.99, 0.985)))
        for c in ("A -> B", "C")
        for s, a in zip((0, 1, 2), accs)
    ]
    jobs += [
        job("OFA_x", c, s, error="RuntimeError: needs projectors | stages")
        for c in ("A -> B", "C")
        for s in (0, 1, 2)
    ]
    jobs += [
        job("half", "A -> B", 0, acc=0.5),
        job("half", "A -> B", 1, error="boom"),
        job("half", "A -> B", 2, acc=0.7),
    ]
    jobs += [job("half", "C", s) for s in (0, 1, 2)]
    for j in jobs[-3:]:
        j.state = "missing"
    return spec, cells_from_jobs(spec, jobs)


def test_render_mean_std_reference_delta_and_failed_cells(tmp_path):
    spec, cells = hand_made()
    assert cell_text(cells[("CE", "A -> B")], 2) == "98.00 ± 1.00"
    assert cell_text(cells[("half", "A -> B")], 2) == "60.00 ± 14.14 (2/3 seeds)"
    assert cell_text(cells[("half", "C")], 2) == "-" and cells[("half", "C")].status == "missing"
    assert cell_text(Cell("r", "c", values=[97.5]), 2) == "97.50"
    md = to_markdown(spec, cells, seeds=spec.seeds, machine="test box")
    assert "| CE | 98.00 ± 1.00 |  |  | 98.00 ± 1.00 |  |" in md
    assert "| KD | **98.50 ± 0.50** | +0.50 | 98.10 | **98.50 ± 0.50** | +0.50 |" in md
    assert "| OFA_x | failed: RuntimeError: needs projectors \\| stages |" in md
    assert "- OFA_x / A -> B, seed 0: RuntimeError: needs projectors | stages" in md
    assert "- half / A -> B, seed 1: boom" in md and "Machine: test box." in md
    rows = list(csv.DictReader(to_csv(spec, cells).splitlines()))
    kd = next(r for r in rows if (r["row"], r["column"]) == ("KD", "A -> B"))
    assert float(kd["mean"]) == pytest.approx(98.5) and float(kd["std"]) == pytest.approx(0.5)
    assert float(kd["reference"]) == 98.1 and float(kd["delta_vs_CE"]) == pytest.approx(0.5)
    assert kd["values"].split() == ["98.0", "99.0", "98.5"]
    tex = to_latex(spec, cells, seeds=spec.seeds, machine="test box")
    assert r"OFA\_x & failed" in tex and r"A $\rightarrow$ B" in tex and r"98.00 $\pm$ 1.00" in tex
    paths = write_all(spec, cells, tmp_path, seeds=spec.seeds, machine="test box")
    assert [p.name for p in paths] == ["hand.md", "hand.csv", "hand.tex", "hand.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_columns_with_their_own_metrics_read_one_run_and_count_wins(tmp_path):
    """A row's metric-columns read the same records; direction, scale and decimals are per column."""
    spec = TableSpec(
        name="multi",
        metric=None,
        seeds=(0, 1),
        baseline_row="MLE",
        rows=(Axis("MLE"), Axis("SM")),
        columns=(
            Axis("acc", metric="test/acc", scale=100, decimals=1),
            Axis("ppl", metric="test/ppl", higher_is_better=False, decimals=3),
        ),
    )
    records = {
        "MLE": ({"test/acc": 0.50, "test/ppl": 2.0}, {"test/acc": 0.70, "test/ppl": 2.2}),
        "SM": ({"test/acc": 0.80, "test/ppl": 2.5}, {"test/acc": 0.80, "test/ppl": 2.5}),
    }
    jobs = []
    for row, per_seed in records.items():
        for column in ("acc", "ppl"):
            for seed, metrics in enumerate(per_seed):
                j = Job(row, column, seed, [], run_dir=Path(f"/runs/{row}/seed{seed}"))
                j.state, j.record = "finished", {"metrics": metrics}
                jobs.append(j)
    assert len(cells_mod.to_run([*jobs[:2], *jobs[2:4]])) == 0  # finished: nothing to run
    missing = [Job(j.row, j.column, j.seed, [], run_dir=j.run_dir) for j in jobs]
    assert len(cells_mod.to_run(missing)) == 4  # one run per (row, seed), not per cell
    cells = cells_from_jobs(spec, jobs)
    assert cells[("MLE", "acc")].mean == pytest.approx(60.0) and cells[("SM", "ppl")].mean == pytest.approx(
        2.5
    )
    md = to_markdown(spec, cells, seeds=spec.seeds, machine="box")
    assert "| method | acc | Δ vs MLE | ppl | Δ vs MLE | wins vs MLE |" in md
    # SM: higher accuracy (a win, on both seeds: †), higher perplexity (a loss, lower is better there): 1 of 2
    assert "| SM | **80.0 ± 0.0** | +20.0 † | 2.500 ± 0.000 | +0.400 | 1/2 |" in md
    assert "| MLE | 60.0 ± 14.1 |  | **2.100 ± 0.141** |  |  |" in md
    assert "acc = `test/acc` x 100" in md and "ppl = `test/ppl`" in md
    rows = list(csv.DictReader(to_csv(spec, cells).splitlines()))
    assert [(r["row"], r["column"], r["metric"], r["beats_MLE"]) for r in rows] == [
        ("MLE", "acc", "test/acc", ""),
        ("MLE", "ppl", "test/ppl", ""),
        ("SM", "acc", "test/acc", "true"),
        ("SM", "ppl", "test/ppl", "false"),
    ]
    assert r"wins vs MLE" in to_latex(spec, cells, seeds=spec.seeds, machine="box")
    paths = write_all(spec, cells, tmp_path, seeds=spec.seeds, machine="box")
    assert paths[3].stat().st_size > 0


def test_teacher_rows_get_no_wins_count():
    from divlab.tables.render import wins

    spec = TableSpec(
        name="t",
        metric="test/acc",
        baseline_row="CE",
        rows=(Axis("teacher", kind="teacher"), Axis("CE"), Axis("KD")),
        columns=(Axis("a"), Axis("b")),
    )
    cells = {
        (r, c): Cell(r, c, values=[v], expected=1)
        for (r, v) in (("teacher", 0.99), ("CE", 0.9), ("KD", 0.95))
        for c in ("a", "b")
    }
    assert (
        wins(spec, cells, "KD") == "2/2"
        and wins(spec, cells, "teacher") == ""
        and wins(spec, cells, "CE") == ""
    )


def test_column_metric_keys_are_checked(tmp_path):
    columns = [
        {"name": "a", "metric": "test/acc"},
        {"name": "b", "metric": "test/ppl", "higher_is_better": False},
    ]
    table = {**GRID, "metric": None, "columns": columns, "reference": None}
    spec = load_table(str(write_table(tmp_path, "ok", table)), CONF)
    assert spec.metric_of("b") == "test/ppl" and spec.higher_is_better_of("b") is False
    assert spec.higher_is_better_of("a") is True and not spec.one_metric
    with pytest.raises(ConfigError, match="metric must be set"):
        load_table(
            str(write_table(tmp_path, "bad1", {**table, "columns": [{"name": "a"}, columns[1]]})), CONF
        )
    with pytest.raises(ConfigError, match=r"columns\[0\].decimals must be an integer"):
        load_table(
            str(write_table(tmp_path, "bad2", {**table, "columns": [{**columns[0], "decimals": "x"}]})), CONF
        )
    with pytest.raises(ConfigError, match="unknown keys"):
        load_table(str(write_table(tmp_path, "bad3", {**GRID, "rows": [{"name": "r", "metric": "x"}]})), CONF)


def test_long_error_is_shortened_in_the_cell_only():
    cell = Cell("r", "c", errors=["seed 0: " + "x" * 200], expected=1)
    assert cell_text(cell, 2).endswith("...") and len(cell_text(cell, 2)) < 110
    assert cell_text(cell, 2, short=False) == "failed: " + "x" * 200


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_lmkd_smol_table_plans_every_divergence_with_reference_rows_once(tmp_path, monkeypatch):
    """The LLM-distillation table composes without building a model: 8 trained rows x 3 seeds, and the
    teacher and the untrained student (kind: reference, task.fit=false) once each."""
    spec = load_table("lmkd_smol", CONF)
    kinds = {r.name: r.kind for r in spec.rows}
    assert [n for n, k in kinds.items() if k == "reference"] == [
        "Teacher (SmolLM2-135M-Instruct)",
        "Student before training",
    ]
    monkeypatch.chdir(tmp_path)
    jobs = plan(spec, conf_dir=str(CONF), extra=[f"paths.output_root={tmp_path}"])
    assert all(j.state == "missing" for j in jobs), [j.error for j in jobs if j.error]
    once = [j for j in jobs if j.kind == "reference"]
    assert len(once) == 2 * len(spec.columns) and {j.seed for j in once} == {0}
    runs = {j.run_dir for j in jobs}
    assert len(runs) == 2 + 8 * 3  # one run fills every column of its row
    todo = cells_mod.to_run(jobs)  # the reference rows run too (once), not only the trained rows
    assert len(todo) == len(runs) and sum(j.kind == "reference" for j in todo) == 2


def test_reference_rows_get_no_wins_count_and_are_not_ranked():
    from divlab.tables.render import best_rows, wins

    spec = TableSpec(
        name="t",
        metric="test/acc",
        baseline_row="CE",
        rows=(Axis("teacher", kind="reference"), Axis("CE"), Axis("KD")),
        columns=(Axis("a"),),
    )
    cells = {
        (r, "a"): Cell(r, "a", values=[v], expected=1)
        for (r, v) in (("teacher", 0.99), ("CE", 0.9), ("KD", 0.95))
    }
    assert wins(spec, cells, "teacher") == "" and best_rows(spec, cells)["a"] == {"KD"}


def test_delta_marks_rows_better_on_every_shared_seed():
    from divlab.tables.render import beats_every_seed, delta_text

    spec = TableSpec(
        name="t",
        metric="test/ppl",
        higher_is_better=False,
        baseline_row="base",
        rows=(Axis("base"), Axis("steady"), Axis("mixed"), Axis("one")),
        columns=(Axis("a"),),
    )
    base = [16.0, 17.0, 15.0]
    rows = {"base": base, "steady": [15.9, 16.9, 14.9], "mixed": [15.0, 17.5, 14.0]}
    cells = {(r, "a"): Cell(r, "a", values=v, seeds=[0, 1, 2], expected=3) for r, v in rows.items()}
    cells[("one", "a")] = Cell("one", "a", values=[1.0], seeds=[1], expected=3)
    # steady is better on every seed though its mean gain (0.1) is far inside the across-seed std (1.0);
    # mixed has the larger mean gain (0.5) but loses on seed 1
    assert beats_every_seed(spec, cells, "steady", "a") is True
    assert beats_every_seed(spec, cells, "mixed", "a") is False
    assert beats_every_seed(spec, cells, "one", "a") is None  # one shared seed: no verdict
    assert delta_text(spec, cells, "steady", "a") == "-0.10 †"
    assert delta_text(spec, cells, "mixed", "a") == "-0.50"


def test_setup_targets_run_before_planning_and_a_failing_one_stops_the_table(tmp_path, capsys):
    table = tmp_path / "needs_data.yaml"
    table.write_text(
        "metric: test/acc\nsetup: [no-such-target-divlab]\nrows: [{name: a}]\ncolumns: [{name: c}]\n"
    )
    assert load_table(str(table), ROOT / "conf").setup == ("no-such-target-divlab",)
    code = reproduce.main([f"table={table}", f"paths.output_root={tmp_path / 'out'}"])
    assert (
        code == 2
        and "`make no-such-target-divlab` (setup of table needs_data) failed" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()  # nothing was planned or run
    with pytest.raises(ConfigError, match="setup"):
        table.write_text("metric: test/acc\nsetup: data-text\nrows: [{name: a}]\ncolumns: [{name: c}]\n")
        load_table(str(table), ROOT / "conf")
