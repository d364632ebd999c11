"""Sample metrics: mode statistics by hand, k-NN precision/recall against scikit-learn, divergences reused."""

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from divlab.data.toy2d import ring8_mixture
from divlab.divergences import get_divergence
from divlab.metrics.generative import knn_precision_recall, mode_statistics, sample_divergences


def test_mode_statistics_by_hand():
    m = ring8_mixture()
    # 60 samples on mode 0, 39 on mode 3, 1 (1% < threshold? no: exactly 1%) on mode 5, 0 elsewhere, plus 100 off-mode
    on = torch.cat([m.means[0].repeat(60, 1), m.means[3].repeat(39, 1), m.means[5].repeat(1, 1)])
    off = torch.zeros(100, 2)  # the ring centre: far from every mode
    stats = mode_statistics(torch.cat([on, off]), m)
    assert stats["modes_covered"] == 2  # 1/200 = 0.5% < 1%
    assert stats["coverage"] == 2 / 8
    assert stats["hq"] == 0.5
    share = np.zeros(8)
    share[0], share[3], share[5] = 60 / 200, 39 / 200, 1 / 200
    assert np.isclose(stats["mode_tv"], 0.5 * (np.abs(share - 1 / 8).sum() + 0.5))
    # just inside / outside 3 std
    edge = m.means[1] + torch.tensor([0.299, 0.0], dtype=torch.float64)
    assert mode_statistics(edge[None], m)["hq"] == 1.0
    assert (
        mode_statistics((m.means[1] + torch.tensor([0.301, 0.0], dtype=torch.float64))[None], m)["hq"] == 0.0
    )


def test_knn_precision_recall_matches_sklearn():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 2))
    fake = rng.normal(loc=0.7, size=(250, 2))
    ours = knn_precision_recall(torch.tensor(real), torch.tensor(fake), k=3)

    def radii(x):
        return NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)[0][:, 3]

    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    precision = (d <= radii(real)[None]).any(1).mean()
    recall = (d.T <= radii(fake)[None]).any(1).mean()
    assert np.isclose(ours["precision"], precision) and np.isclose(ours["recall"], recall)
    same = knn_precision_recall(torch.tensor(real), torch.tensor(real))
    assert same == {"precision": 1.0, "recall": 1.0}
    far = knn_precision_recall(torch.tensor(real), torch.tensor(real + 100.0))
    assert far == {"precision": 0.0, "recall": 0.0}


def test_sample_divergences_are_the_library_ones():
    x, y = torch.randn(200, 2, dtype=torch.float64), torch.randn(150, 2, dtype=torch.float64) + 0.5
    out = sample_divergences(x, y)
    assert np.isclose(out["mmd"], float(get_divergence("mmd")(x, y)))
    assert np.isclose(out["energy"], float(get_divergence("energy_distance")(x, y)))
    assert np.isclose(
        out["sliced_w"], float(get_divergence("sliced_wasserstein", num_projections=256, seed=0)(x, y))
    )
    assert out["sliced_w"] > 0.1 and out["mmd"] > 0
