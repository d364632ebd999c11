"""A table's bar chart (outputs/tables/<name>.png) and the metric labels shared with the text renderers."""

import os
from pathlib import Path

from divlab.tables.spec import TableSpec


def metric_label(spec: TableSpec, column: str) -> str:
    scale = spec.scale_of(column)
    return f"`{spec.metric_of(column)}`" + ("" if scale == 1 else f" x {scale:g}")


def to_png(spec: TableSpec, cells, path: Path, *, seeds) -> None:
    """Grouped bars (one group per row, one bar per column), std error bars, published values as
    diamonds, the baseline row's mean as a dashed line, `failed` written where a cell has no value.
    Columns with metrics of their own get one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r.name for r in spec.rows]
    panels = [[c.name for c in spec.columns]] if spec.one_metric else [[c.name] for c in spec.columns]
    per_panel = max(6.0, len(rows) * (0.3 + 0.25 * len(panels[0])) + 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(per_panel, 4.2 * len(panels)), squeeze=False)
    for ax, columns in zip(axes[:, 0], panels):
        _bars(ax, spec, cells, rows, columns)
    axes[0, 0].set_title(f"{spec.title}\nmean ± std over seeds {', '.join(map(str, seeds))}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)


def _bars(ax, spec: TableSpec, cells, rows: list[str], columns: list[str]) -> None:
    """One panel: the rows' bars for `columns` (which share one metric)."""
    width = 0.8 / len(columns)
    mine = [cells[(r, c)] for r in rows for c in columns]
    shown = [
        v
        for c in mine
        for v in ([c.mean] if c.mean is not None else []) + ([c.reference] if c.reference is not None else [])
    ]
    low = min(shown) if shown else 0.0
    high = max((c.mean or 0) + (c.std or 0) for c in mine) if shown else 1.0
    high = max([high] + [c.reference for c in mine if c.reference is not None])
    pad = 0.15 * (high - low) + 10 ** -spec.decimals_of(columns[0])
    bottom = low - pad if 0 < low and low > 0.5 * high else (0.0 if low >= 0 else low - pad)
    for j, column in enumerate(columns):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        means = [cells[(r, column)].mean for r in rows]
        stds = [cells[(r, column)].std or 0.0 for r in rows]
        heights = [(m - bottom) if m is not None else 0.0 for m in means]
        bars = ax.bar(xs, heights, width * 0.9, bottom=bottom, yerr=stds, capsize=2, label=column)
        base = cells[(spec.baseline_row, column)].mean if spec.baseline_row is not None else None
        if base is not None:  # the baseline row's mean across the chart, in the column's colour
            ax.axhline(base, color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=0.8)
        for x, r in zip(xs, rows):
            cell = cells[(r, column)]
            if cell.reference is not None:
                ax.plot(
                    [x],
                    [cell.reference],
                    marker="D",
                    color="black",
                    markersize=4,
                    linestyle="none",
                    label="published" if "published" not in ax.get_legend_handles_labels()[1] else None,
                )
            if cell.mean is None:
                ax.text(x, bottom, " " + cell.status, rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows, rotation=30, ha="right")
    ax.set_ylabel(metric_label(spec, columns[0]).replace("`", ""))
    ax.set_ylim(bottom=bottom, top=high + 0.08 * (high - bottom + 1e-9))
    ax.legend(fontsize=7, ncol=min(4, len(columns) + 1))
