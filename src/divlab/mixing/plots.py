"""The proportions-over-time plot of a mixing run (proportions.png in the run directory)."""

from __future__ import annotations

from pathlib import Path


def plot_proportions(
    history: list[dict], groups: list[str], *, total_steps: int, path: Path, title: str = ""
) -> None:
    """Stacked areas of p over steps from the change records {"step", "p", "reason"}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not history:
        return
    steps = [h["step"] for h in history] + [max(total_steps, history[-1]["step"] + 1)]
    p = np.array([h["p"] for h in history] + [history[-1]["p"]])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.stackplot(steps, p.T, labels=groups, step="post", alpha=0.85)
    ax.set_xlim(0, steps[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("proportion")
    ax.set_title(f"mixture proportions ({title})" if title else "mixture proportions")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
