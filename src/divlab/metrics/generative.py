"""Sample-quality metrics that need no download, for generators of low-dimensional data.

- Mixtures (means mu_k, stds s_k, weights w_k): a sample is *on* mode k when it lies within
  3 s_k of mu_k (the nearest such mode if several). coverage = fraction of modes holding at
  least 1% of the samples; hq = fraction of samples on some mode ("high quality");
  mode_tv = total variation between (w_1..w_K, 0) and the empirical (n_1..n_K, n_off) / n.
- k-NN precision and recall (Kynkaenniemi et al. 2019, k = 3): precision = fraction of generated
  samples inside the k-NN ball of some reference sample; recall = the same with the roles swapped.
- mmd, sliced_w, energy: the sample divergences of divlab.divergences.samples (MMD^2 with RBF
  bandwidths 0.5..8, sliced W_2^2 over 256 fixed directions, energy distance^2).
- nfe and sec_per_1k (wall-clock seconds per 1,000 samples) of a sampler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

COVERAGE_MIN_SHARE = 0.01  # a mode is covered when it holds >= 1% of the samples
MODE_RADIUS_STDS = 3.0  # ... within 3 of its stds
KNN_K = 3


def mode_statistics(samples: Tensor, mixture) -> dict[str, float]:
    """coverage, modes_covered, hq, mode_tv for samples (n, d) of a Gaussian mixture."""
    x = samples.detach().to(torch.float64).cpu()
    means, stds, weights = mixture.means.cpu(), mixture.stds.cpu(), mixture.weights.cpu()
    dist = torch.cdist(x, means)  # (n, K)
    inside = dist <= MODE_RADIUS_STDS * stds[None, :]
    dist = torch.where(inside, dist, torch.full_like(dist, float("inf")))
    on = inside.any(1)
    mode = dist.argmin(1)
    counts = torch.bincount(mode[on], minlength=len(weights)).to(torch.float64)
    share = counts / len(x)
    covered = int((share >= COVERAGE_MIN_SHARE).sum())
    off = 1.0 - float(on.double().mean())
    tv = 0.5 * (float((share - weights).abs().sum()) + off)
    return {
        "coverage": covered / len(weights),
        "modes_covered": float(covered),
        "hq": 1.0 - off,
        "mode_tv": tv,
    }


def knn_radii(x: Tensor, k: int) -> Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # k-th neighbour, excluding itself


def knn_precision_recall(reference: Tensor, generated: Tensor, *, k: int = KNN_K) -> dict[str, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-NN balls."""
    real, fake = reference.detach().double().cpu(), generated.detach().double().cpu()
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    d = torch.cdist(fake, real)  # (n_fake, n_real)
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d.T <= r_fake[None, :]).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def sample_divergences(reference: Tensor, generated: Tensor) -> dict[str, float]:
    """mmd, sliced_w, energy from the divergence library (reference = P, generated = Q)."""
    from divlab.divergences import get_divergence

    real, fake = reference.detach().double().cpu(), generated.detach().double().cpu()
    return {
        "mmd": float(get_divergence("mmd")(real, fake)),
        "sliced_w": float(get_divergence("sliced_wasserstein", num_projections=256, seed=0)(real, fake)),
        "energy": float(get_divergence("energy_distance")(real, fake)),
    }


def evaluate_samples(generated: Tensor, reference: Tensor, *, mixture=None) -> dict[str, float]:
    out = {**knn_precision_recall(reference, generated), **sample_divergences(reference, generated)}
    if mixture is not None:
        out.update(mode_statistics(generated, mixture))
    return out


def save_figure(fig, path: Path, *, title: str = "") -> None:
    """Title, tight layout, write (parents created) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter_plot(path: Path, panels: dict[str, Tensor], *, title: str = "") -> None:
    """Side-by-side 2-D scatter plots (matplotlib, Agg backend) saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    first = next(iter(panels.values()))  # the data panel fixes the common frame
    lim = float(first.abs().max()) * 1.6
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
    save_figure(fig, path, title=title)


@torch.no_grad()
def evaluate_sampler(
    sampler: Callable[[Tensor], Tensor],
    *,
    reference: Tensor,
    mixture=None,
    n: int = 2048,
    nfe: int,
    seed: int = 0,
    device=None,
    plot_path: Path | None = None,
    title: str = "",
) -> dict[str, float]:
    """Draw n samples from `sampler(latents)` (latents ~ N(0, I), seeded), time them, and score them."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    latents = torch.randn(n, *reference.shape[1:], generator=gen).to(device or "cpu")
    start = time.perf_counter()
    samples = sampler(latents)
    seconds = time.perf_counter() - start
    samples = samples.detach().float().cpu()
    if not torch.isfinite(samples).all():
        bad = float((~torch.isfinite(samples)).any(1).double().mean())
        return {"nonfinite": bad, "nfe": float(nfe), "sec_per_1k": seconds * 1000 / n}
    out = evaluate_samples(samples.flatten(1), reference.flatten(1), mixture=mixture)  # images: pixel vectors
    out.update({"nfe": float(nfe), "sec_per_1k": seconds * 1000 / n})
    if plot_path is not None and samples.ndim == 2:  # a scatter of 2-D points (image grids: the task's)
        scatter_plot(plot_path, {"data (test)": reference, "samples": samples}, title=title)
    return out
