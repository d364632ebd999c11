"""A table's cells (mean ± std over seeds, published value, difference from a baseline row) as
Markdown, CSV, LaTeX and a bar chart (tables/figure.py). Everything here reads records only: no run is started."""

import csv
import io
import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from divlab.tables.figure import metric_label, to_png  # noqa: F401  (part of this module's interface)
from divlab.tables.spec import TableSpec
from divlab.utils.io import atomic_write_text

SHORT_ERROR = 90  # characters of the error line shown inside a cell; the full line is listed below


@dataclass
class Cell:
    """One (row, column): the metric of each finished seed (already scaled), and what went wrong."""

    row: str
    column: str
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # seeds of `values`
    expected: int = 1  # seeds the table asks for
    errors: list[str] = field(default_factory=list)  # "seed k: first error line"
    reference: float | None = None
    run_dirs: list[str] = field(default_factory=list)
    kind: str = "run"

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None with fewer than two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def status(self) -> str:
        if not self.values:
            return "failed" if self.errors else "missing"
        return "ok" if len(self.values) >= self.expected else "partial"


def cells_from_jobs(spec: TableSpec, jobs) -> dict[tuple[str, str], Cell]:
    """Group jobs (divlab.tables.cells.Job) into cells; the metric is read from each finished record."""
    cells = {
        (r.name, c.name): Cell(
            r.name, c.name, reference=spec.reference.get((r.name, c.name)), kind=r.kind, expected=0
        )
        for r in spec.rows
        for c in spec.columns
    }
    for job in jobs:
        cell = cells[(job.row, job.column)]
        cell.expected += 1
        if job.run_dir is not None:
            cell.run_dirs.append(str(job.run_dir))
        if job.state == "finished":
            metric = spec.metric_of(job.column)
            value = (job.record or {}).get("metrics", {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                cell.values.append(float(value) * spec.scale_of(job.column))
                cell.seeds.append(job.seed)
            else:
                cell.errors.append(f"seed {job.seed}: metrics.json has no finite {metric}")
        elif job.state == "failed":
            cell.errors.append(f"seed {job.seed}: {job.error}")
    return cells


def delta(spec: TableSpec, cells, row: str, column: str) -> float | None:
    """Difference of means from the baseline row, in shown units (None where either is missing)."""
    if spec.baseline_row is None or row == spec.baseline_row:
        return None
    ours, base = cells[(row, column)].mean, cells[(spec.baseline_row, column)].mean
    return None if ours is None or base is None else ours - base


def beats_baseline(spec: TableSpec, cells, row: str, column: str) -> bool | None:
    """Whether the row's mean is better than the baseline row's (in the column's direction)."""
    d = delta(spec, cells, row, column)
    if d is None:
        return None
    return d > 0 if spec.higher_is_better_of(column) else d < 0


def beats_every_seed(spec: TableSpec, cells, row: str, column: str) -> bool | None:
    """Whether the row is better than the baseline row on every seed both ran (each seed's runs compared with
    each other, so what the seeds share cancels); None with fewer than two shared seeds."""
    if spec.baseline_row is None or row == spec.baseline_row:
        return None
    ours, base = cells[(row, column)], cells[(spec.baseline_row, column)]
    base_by_seed = dict(zip(base.seeds, base.values))
    pairs = [(v, base_by_seed[s]) for s, v in zip(ours.seeds, ours.values) if s in base_by_seed]
    if len(pairs) < 2:
        return None
    higher = spec.higher_is_better_of(column)
    return all(v > b if higher else v < b for v, b in pairs)


def delta_text(spec: TableSpec, cells, row: str, column: str) -> str:
    """The Δ cell: `-0.26`, with `†` where the row beats the baseline on every shared seed."""
    text = fmt(delta(spec, cells, row, column), spec.decimals_of(column), signed=True)
    return text + " †" if text and beats_every_seed(spec, cells, row, column) else text


def wins(spec: TableSpec, cells, row: str) -> str:
    """`k/n`: the columns (of n with both means) where the row beats the baseline row."""
    if row == spec.baseline_row or next(r for r in spec.rows if r.name == row).kind != "run":
        return ""
    results = [beats_baseline(spec, cells, row, c.name) for c in spec.columns]
    known = [r for r in results if r is not None]
    return f"{sum(known)}/{len(known)}" if known else ""


def shows_wins(spec: TableSpec) -> bool:
    return spec.baseline_row is not None and len(spec.columns) > 1


def best_rows(spec: TableSpec, cells) -> dict[str, set[str]]:
    """Per column, the run rows whose mean is the best (ties all count; teacher and reference rows are not candidates)."""
    best = {}
    for column in spec.columns:
        means = {
            r.name: cells[(r.name, column.name)].mean
            for r in spec.rows
            if r.kind == "run" and cells[(r.name, column.name)].mean is not None
        }
        if len(means) > 1:
            top = (max if spec.higher_is_better_of(column.name) else min)(means.values())
            best[column.name] = {
                name for name, m in means.items() if abs(m - top) <= 1e-9 * max(1.0, abs(top))
            }
    return best


def fmt(value: float | None, decimals: int, *, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def cell_text(cell: Cell, decimals: int, *, pm: str = "±", short: bool = True) -> str:
    """`97.56 ± 0.44`; one seed: `97.56`; some seeds missing: `... (2/3 seeds)`; none: `failed: ...`."""
    if cell.status == "missing":
        return "-"
    if cell.status == "failed":
        error = cell.errors[0].split(": ", 1)[1] if ": " in cell.errors[0] else cell.errors[0]
        if short and len(error) > SHORT_ERROR:
            error = error[: SHORT_ERROR - 3] + "..."
        return f"failed: {error}"
    text = fmt(cell.mean, decimals)
    if cell.std is not None:
        text += f" {pm} {fmt(cell.std, decimals)}"
    if cell.status == "partial":
        text += f" ({len(cell.values)}/{cell.expected} seeds)"
    return text


def header_columns(spec: TableSpec) -> list[tuple[str, str, str]]:
    """(title, column name, what): what is ours | delta | reference; references only where given."""
    out = []
    for column in spec.columns:
        out.append((column.name, column.name, "ours"))
        if spec.baseline_row is not None:
            out.append((f"Δ vs {spec.baseline_row}", column.name, "delta"))
        if any(col == column.name for (_, col) in spec.reference):
            out.append(("published", column.name, "reference"))
    return out


def machine_line() -> str:
    """The machine this table was made on: OS, CPU, core count, Python, torch, GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = (
        f"GPU {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
        if torch.cuda.is_available()
        else "no GPU"
    )
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {gpu}"
    )


def describe(spec: TableSpec, seeds) -> str:
    if spec.one_metric:
        what = metric_label(spec, spec.columns[0].name)
    else:
        what = "per column: " + ", ".join(f"{c.name} = {metric_label(spec, c.name)}" for c in spec.columns)
    text = f"{what}; mean ± sample std over seeds {', '.join(map(str, seeds))} (one seed: its value)"
    if spec.baseline_row is not None:
        text += f"; Δ: difference of means from {spec.baseline_row} († better on every seed, seed by seed)"
    if shows_wins(spec):
        text += f"; wins: columns where the row's mean is better than {spec.baseline_row}'s"
    if spec.reference:
        text += "; published: the value reported in the paper(s)"
    directions = {spec.higher_is_better_of(c.name) for c in spec.columns}
    best = (
        "highest"
        if directions == {True}
        else "lowest"
        if directions == {False}
        else "best (in the column's direction)"
    )
    return text + f"; bold: {best} mean of a column."


def failure_lines(spec: TableSpec, cells) -> list[str]:
    return [f"{c.row} / {c.column}, {e}" for c in cells.values() for e in c.errors]


def run_time_line(jobs) -> str:
    records = {
        str(j.run_dir): j.record for j in jobs if j.kind != "teacher" and j.state == "finished" and j.record
    }
    total = sum(float(r.get("wall_time_s", 0.0)) for r in records.values())
    return f"{len(records)} runs, {total / 60:.1f} min of run wall time in all (sum of their metrics.json wall_time_s)"


def to_markdown(spec: TableSpec, cells, *, seeds, machine: str, footer: str = "") -> str:
    heads = header_columns(spec)
    best = best_rows(spec, cells)
    extra = [f"wins vs {spec.baseline_row}"] if shows_wins(spec) else []
    lines = [
        f"# {spec.title}",
        "",
        describe(spec, seeds),
        "",
        "| method | " + " | ".join([h[0] for h in heads] + extra) + " |",
        "|---|" + "---:|" * (len(heads) + len(extra)),
    ]
    for row in spec.rows:
        out = []
        for _, column, what in heads:
            cell, decimals = cells[(row.name, column)], spec.decimals_of(column)
            if what == "ours":
                text = cell_text(cell, decimals).replace("|", "\\|")
                out.append(f"**{text}**" if row.name in best.get(column, ()) else text)
            elif what == "delta":
                out.append(delta_text(spec, cells, row.name, column))
            else:
                out.append(fmt(cell.reference, decimals))
        out += [wins(spec, cells, row.name)] if extra else []
        lines.append(f"| {row.name} | " + " | ".join(out) + " |")
    lines.append("")
    failures = failure_lines(spec, cells)
    if failures:
        lines += [
            f"Failed runs (first error line; logs in `{spec.name}_logs/` beside this file; "
            f"`retry_failed=true` runs them again):",
            "",
        ]
        lines += [f"- {f}" for f in failures] + [""]
    lines += [f"- {note}" for note in spec.notes]
    lines += [f"- Machine: {machine}."] + ([f"- {footer}."] if footer else []) + [""]
    return "\n".join(lines)


def to_csv(spec: TableSpec, cells) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "row",
            "column",
            "metric",
            "status",
            "n_seeds",
            "seeds",
            "mean",
            "std",
            "values",
            "reference",
            f"delta_vs_{spec.baseline_row or 'baseline'}",
            f"beats_{spec.baseline_row or 'baseline'}",
            "error",
            "run_dirs",
        ]
    )
    num = lambda v: "" if v is None else repr(round(v, 10))  # noqa: E731
    for row in spec.rows:
        for column in spec.columns:
            c = cells[(row.name, column.name)]
            beats = beats_baseline(spec, cells, row.name, column.name)
            writer.writerow(
                [
                    row.name,
                    column.name,
                    spec.metric_of(column.name),
                    c.status,
                    len(c.values),
                    " ".join(map(str, c.seeds)),
                    num(c.mean),
                    num(c.std),
                    " ".join(num(v) for v in c.values),
                    num(c.reference),
                    num(delta(spec, cells, row.name, column.name)),
                    "" if beats is None else str(beats).lower(),
                    " | ".join(c.errors),
                    " ".join(c.run_dirs),
                ]
            )
    return buf.getvalue()


TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"$^\dagger$",
}


def tex_escape(text: str) -> str:
    out = "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("->", r"$\rightarrow$").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(spec: TableSpec, cells, *, seeds, machine: str) -> str:
    heads = header_columns(spec)
    best = best_rows(spec, cells)
    extra = [f"wins vs {spec.baseline_row}"] if shows_wins(spec) else []
    lines = [
        "% generated by scripts/reproduce.py; needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(heads) + len(extra)) + "}",
        r"\toprule",
        "Method & " + " & ".join(tex_escape(h) for h in [h[0] for h in heads] + extra) + r" \\",
        r"\midrule",
    ]
    for row in spec.rows:
        out = []
        for _, column, what in heads:
            cell, decimals = cells[(row.name, column)], spec.decimals_of(column)
            if what == "ours":
                text = (
                    tex_escape(cell_text(cell, decimals).split(":", 1)[0])
                    if cell.status == "failed"
                    else tex_escape(cell_text(cell, decimals))
                )
                out.append(rf"\textbf{{{text}}}" if row.name in best.get(column, ()) else text)
            elif what == "delta":
                out.append(tex_escape(delta_text(spec, cells, row.name, column)))
            else:
                out.append(tex_escape(fmt(cell.reference, decimals)))
        out += [tex_escape(wins(spec, cells, row.name))] if extra else []
        if spec.baseline_row is not None and row.name == spec.baseline_row and row is not spec.rows[-1]:
            lines.append(tex_escape(row.name) + " & " + " & ".join(out) + r" \\ \midrule")
        else:
            lines.append(tex_escape(row.name) + " & " + " & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = f"{spec.title}. {describe(spec, seeds).replace('`', '')} Machine: {machine}."
    failures = failure_lines(spec, cells)
    if failures:
        caption += " Failed: " + "; ".join(failures) + "."
    lines += [r"\caption{" + tex_escape(caption) + "}", rf"\label{{tab:{spec.name}}}", r"\end{table}", ""]
    return "\n".join(lines)


def write_all(spec: TableSpec, cells, out_dir: Path, *, seeds, machine: str, footer: str = "") -> list[Path]:
    """outputs/tables/<name>.md, .csv, .tex, .png; returns their paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{spec.name}.{ext}" for ext in ("md", "csv", "tex", "png")]
    atomic_write_text(paths[0], to_markdown(spec, cells, seeds=seeds, machine=machine, footer=footer))
    atomic_write_text(paths[1], to_csv(spec, cells))
    atomic_write_text(paths[2], to_latex(spec, cells, seeds=seeds, machine=machine))
    to_png(spec, cells, paths[3], seeds=seeds)
    return paths
