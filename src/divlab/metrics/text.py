"""Offline metrics of generated text: distinct-n, repetition rate, and a MAUVE-style divergence frontier.

- `distinct_n`: unique n-grams / all n-grams over a set of generations (Li et al. 2016).
- `repetition_rate`: share of a sequence's n-grams that already occurred earlier in it, averaged.
- `mauve_style`: Pillutla et al. 2021's recipe on given features (e.g. a judge LM's mean hidden
  states): quantise both sets jointly with k-means, histograms P (reference) and Q (generations),
  then the divergence frontier {(exp(-c KL(Q||R)), exp(-c KL(P||R))) : R = l P + (1-l) Q, l in (0, 1)}
  and the area under it (1 for identical histograms, near 0 for disjoint ones). KL is the divergence
  library's `forward_kl`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def ngrams(seq: Sequence, n: int) -> list[tuple]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Unique n-grams / total n-grams over all sequences (0 when there is none)."""
    grams = [g for s in sequences for g in ngrams(list(s), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: Sequence[Sequence], n: int = 4) -> float:
    """Mean over sequences of the share of n-grams that already occurred earlier in the same sequence."""
    rates = []
    for s in sequences:
        grams = ngrams(list(s), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def mauve_style(
    reference: np.ndarray,
    generated: np.ndarray,
    *,
    n_clusters: int = 16,
    scale: float = 5.0,
    n_lambdas: int = 101,
    seed: int = 0,
) -> float:
    """Area under the divergence frontier of k-means histograms of two feature sets (N, D), (M, D)."""
    from sklearn.cluster import KMeans

    from divlab.divergences import get_divergence

    feats = np.concatenate([reference, generated]).astype(np.float64)
    k = min(n_clusters, len(feats))
    labels = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(feats)
    p = np.bincount(labels[: len(reference)], minlength=k) / len(reference)
    q = np.bincount(labels[len(reference) :], minlength=k) / len(generated)
    lam = np.linspace(0, 1, n_lambdas)[1:-1, None]
    r = lam * p + (1 - lam) * q
    kl = get_divergence("forward_kl")

    def logs(x):
        return torch.from_numpy(np.log(np.maximum(x, 1e-300)) + np.where(x > 0, 0.0, -np.inf))

    kl_pr = kl(logs(np.broadcast_to(p, r.shape)), logs(r)).numpy()  # KL(P || R)
    kl_qr = kl(logs(np.broadcast_to(q, r.shape)), logs(r)).numpy()  # KL(Q || R)
    x = np.concatenate([[0.0], np.exp(-scale * kl_qr), [1.0]])
    y = np.concatenate([[1.0], np.exp(-scale * kl_pr), [0.0]])
    order = np.argsort(x)
    return float(np.trapezoid(y[order], x[order]))
