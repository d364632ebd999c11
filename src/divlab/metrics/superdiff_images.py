"""Metrics and figures of SuperDiff on images (task=superpose_images, divlab.tasks.superpose_images): two
diffusion models trained on two subsets of the classes (digits 0-4 and 5-9), superposed at sampling time.

No exact densities exist for images, so the samples are read through the fixed metric classifier of
divlab.metrics.image (the cached KD teacher on digits): with p(c | x) its class probabilities and
P_i(x) = sum_{c in part i} p(c | x) the probability mass it puts on part i,

  frac_part1, frac_part2   fractions of samples whose predicted class lies in part 1 / part 2
  part_mass1               mean P_1 (0.5 for an even split of the samples' mass between the parts)
  class_entropy            entropy (nats) of the predicted-class histogram; log 10 = 2.30 for ten even classes
  classes_covered          fraction of all classes holding >= `min_share` of the samples (the 2-D table's
                           mode coverage, with classes as modes)
  cov1, cov2               the same, over the classes of part 1 / part 2
  ambiguous                fraction of samples whose mass is split between the parts: min(P_1, P_2) >=
                           `ambiguous_mass` (SuperDiff's AND looks for images both models find likely)
  split_mass               mean min(P_1, P_2) (0 for samples one part owns, 0.5 for an even split)

The classifier's FD / class TV / confidence / k-NN precision and recall against the full test set (both
parts: the OR target) come from divlab.metrics.image.ImageScorer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

MIN_SHARE = 0.01  # a class is covered when it holds >= 1% of the samples (as a mode in the 2-D table)


def part_metrics(
    probs: Tensor, parts: list[list[int]], *, ambiguous_mass: float, min_share: float = MIN_SHARE
) -> dict:
    """The part and class metrics above from (n, K) class probabilities of the samples."""
    probs = probs.double()
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    share = torch.bincount(pred, minlength=num_classes).double() / len(pred)
    covered = share >= min_share
    mass = torch.stack([probs[:, part].sum(1) for part in parts])  # (2, n) P_1, P_2
    in_part = [torch.isin(pred, torch.as_tensor(part)) for part in parts]
    split = mass.min(0).values
    nonzero = share[share > 0]
    return {
        "frac_part1": float(in_part[0].double().mean()),
        "frac_part2": float(in_part[1].double().mean()),
        "part_mass1": float(mass[0].mean()),
        "class_entropy": float(-(nonzero * nonzero.log()).sum()),
        "classes_covered": float(covered.double().mean()),
        "cov1": float(covered[parts[0]].double().mean()),
        "cov2": float(covered[parts[1]].double().mean()),
        "ambiguous": float((split >= ambiguous_mass).double().mean()),
        "split_mass": float(split.mean()),
    }


def plot_part_mass(results: dict, path: Path, *, parts: list[list[int]]) -> None:
    """Histograms of P_1(x), the classifier's mass on part 1, per sampler: OR is bimodal (0 and 1),
    AND puts samples in between."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    bins = torch.linspace(0, 1, 21).numpy()
    for name, r in results.items():
        p1 = r["probs"][:, parts[0]].sum(1).numpy()
        ax.hist(p1, bins=bins, histtype="step", linewidth=1.4, label=name)
    ax.set_yscale("log")
    ax.set_xlabel(f"classifier mass on part 1 (digits {','.join(map(str, parts[0]))})")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, loc="upper center", ncol=len(results))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
