"""Metrics and figures of SuperDiff sampling (task=superpose, divlab.tasks.superpose) on 2-D mixtures.

The samples of each sampler are scored against the *exact* densities of the two parts of the data:
mode coverage and nearness (mode_metrics), |log q1 - log q2| and the Ito estimator's error
(density_metrics, equation (S4) of divlab.objectives.superdiff), the high-density-region fraction
(hdr_thresholds) and distances to the OR target (union_metrics). The metric names are listed in
divlab.tasks.superpose.
"""

from __future__ import annotations

from pathlib import Path

import torch

# ----------------------------------------------------------------------------- metrics


def part_log_densities(part_mixtures, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(2, B) exact log q_i(x; sigma) of the two parts of the data."""
    from divlab.models.gmm_teacher import GMMTeacher

    return torch.stack([GMMTeacher.from_mixture(m).log_density(x.double(), sigma) for m in part_mixtures])


def mode_metrics(x: torch.Tensor, part_mixtures, parts, *, near_stds: float) -> dict:
    """Coverage of each part's modes (divlab.metrics.generative: >= 1% of the samples within 3 stds) and the
    fractions of samples near modes of part 1 only / part 2 only / both parts / none."""
    from divlab.metrics.generative import mode_statistics

    near = []
    for m in part_mixtures:
        dist = torch.cdist(x.double(), m.means)  # (B, K_i)
        near.append(dist <= near_stds * m.stds[None, :])
    out = {f"cov{i}": mode_statistics(x, m)["coverage"] for i, m in enumerate(part_mixtures, start=1)}
    shared = sorted(set(parts[0]) & set(parts[1]))
    in_shared = torch.zeros(x.shape[0], dtype=torch.bool)
    for i, part in enumerate(parts):
        cols = [part.index(c) for c in shared]
        if cols:
            in_shared |= near[i][:, cols].any(1)
    near1, near2 = near[0].any(1), near[1].any(1)
    out["near1_only"] = float((near1 & ~in_shared).double().mean())
    out["near2_only"] = float((near2 & ~in_shared).double().mean())
    out["near_shared"] = float(in_shared.double().mean())
    out["off_mode"] = float((~near1 & ~near2).double().mean())
    return out


def union_mixture(part_mixtures, weights):
    """The OR target: w_1 part_1 + w_2 part_2 as one Mixture."""
    from divlab.data.toy2d import Mixture

    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    return Mixture(
        torch.cat([m.means for m in part_mixtures]),
        torch.cat([m.stds for m in part_mixtures]),
        torch.cat([wi * m.weights for wi, m in zip(w, part_mixtures)]),
    )


UNION_SAMPLES = 1000  # the union_* metrics use the first 1,000 samples (their cost is quadratic)


def union_metrics(x: torch.Tensor, union) -> dict:
    """k-NN precision/recall, MMD, sliced W, energy of (the first UNION_SAMPLES) samples against as many
    exact samples of the OR target (divlab.metrics.generative), as union_<name>."""
    from divlab.metrics.generative import evaluate_samples

    x = x[:UNION_SAMPLES]
    reference, _ = union.sample(len(x), generator=torch.Generator().manual_seed(2024))
    return {f"union_{k}": v for k, v in evaluate_samples(x.float(), reference).items()}


def hdr_thresholds(part_mixtures, *, sigma: float, mass: float, n: int = 20000) -> torch.Tensor:
    """(2,) tau_i: the region log q_i >= tau_i holds `mass` of part i (quantile over n exact samples)."""
    taus = []
    for i, m in enumerate(part_mixtures):
        x, _ = m.sample(n, generator=torch.Generator().manual_seed(12345 + i))
        x = x.double() + sigma * torch.randn(
            x.shape, generator=torch.Generator().manual_seed(54321 + i), dtype=torch.float64
        )
        logq = part_log_densities([m], x, sigma)[0]
        taus.append(torch.quantile(logq, 1.0 - mass))
    return torch.stack(taus)


def density_metrics(x: torch.Tensor, tracked: torch.Tensor, exact: torch.Tensor, taus: torch.Tensor) -> dict:
    d = exact[0] - exact[1]
    return {
        "dlogq_abs_mean": float(d.abs().mean()),
        "dlogq_abs_median": float(d.abs().median()),
        "dlogq_mean": float(d.mean()),
        "frac_both_high": float((exact >= taus[:, None]).all(0).double().mean()),
        "ito_abs_err": float((tracked - exact).abs().mean()),
        "ito_dlogq_abs_mean": float((tracked[0] - tracked[1]).abs().mean()),
    }


# ----------------------------------------------------------------------------- figures

COLORS = {
    "model1": "tab:blue",
    "model2": "tab:orange",
    "average": "tab:gray",
    "or": "tab:green",
    "and": "tab:red",
}


def plot_samples(results: dict, part_mixtures, path: Path) -> None:
    """One panel per sampler: its samples over exact samples of part 1 (blue) and part 2 (orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = [
        m.sample(1000, generator=torch.Generator().manual_seed(7 + i))[0] for i, m in enumerate(part_mixtures)
    ]
    pts = torch.cat(refs)
    lo, hi = pts.min(0).values - 0.7, pts.max(0).values + 0.7
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for ref, color in zip(refs, ("tab:blue", "tab:orange")):
            ax.scatter(ref[:, 0], ref[:, 1], s=3, c=color, alpha=0.15, linewidths=0)
        ax.scatter(r["x"][:, 0], r["x"][:, 1], s=3, c="black", alpha=0.6, linewidths=0)
        m = r["metrics"]
        ax.set_title(
            f"{name}: cov {m['cov1']:.2f}/{m['cov2']:.2f}, both-high {m['frac_both_high']:.2f}", fontsize=8
        )
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("SuperDiff samples (black) over part 1 (blue) and part 2 (orange)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dlogq_histograms(results: dict, path: Path, *, clip: float = 60.0) -> None:
    """Histograms of the exact log q1 - log q2 at sigma_min per sampler (clipped to [-clip, clip])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    bins = torch.linspace(-clip, clip, 81).numpy()
    for name, r in results.items():
        d = (r["exact"][0] - r["exact"][1]).clamp(-clip, clip).numpy()
        ax.hist(d, bins=bins, histtype="step", linewidth=1.4, color=COLORS.get(name), label=name)
    ax.set_yscale("log")
    ax.set_xlabel(f"log q1(x) - log q2(x) at sigma_min (clipped to +-{clip:g})")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, loc="upper center", ncol=len(results))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
