"""Image metrics: Frechet distance against closed forms (float64), class histograms by hand, the scorer on a
hand-made classifier, grids."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from divlab.errors import ConfigError
from divlab.metrics.generative import knn_precision_recall
from divlab.metrics.image import (
    ImageScorer,
    class_histogram,
    evaluate_image_sampler,
    frechet_distance,
    frechet_distance_of,
    gaussian_fit,
    image_grid,
    tile,
    total_variation,
)


def random_spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def with_moments(mu: torch.Tensor, cov: torch.Tensor, *, seed: int, n: int = 64) -> torch.Tensor:
    """n float64 samples whose sample mean is mu and unbiased sample covariance is cov, exactly."""
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance I
    return mu.double() + z @ torch.linalg.cholesky(cov.double()).T


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())  # 7.25 + 4 + 1 = 12.25
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-12)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(
        torch.tensor([3.0]), torch.tensor([[4.0]]), torch.tensor([1.0]), torch.tensor([[1.0]])
    ) == pytest.approx(4.0 + 1.0, abs=1e-12)


def test_frechet_distance_of_general_gaussians_matches_scipy_sqrtm():
    d = 6
    c1, c2 = random_spd(d, 0), random_spd(d, 1)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    cross = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real  # the usual (FID) formula
    expected = float(((mu1 - mu2) ** 2).sum()) + float(np.trace(c1.numpy() + c2.numpy() - 2 * cross))
    ours = frechet_distance(mu1, c1, mu2, c2)
    assert ours == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(ours, rel=1e-9)  # symmetric
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)
    # singular covariances (fewer samples than dimensions) stay finite and non-negative
    low_rank = torch.randn(3, d, dtype=torch.float64)
    assert 0.0 <= frechet_distance(mu1, low_rank.T @ low_rank, mu2, c2) < math.inf


def test_frechet_distance_of_feature_sets():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.arange(8, dtype=torch.float64) / 4
    assert frechet_distance_of(x, x + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    mu, cov = gaussian_fit(x)
    assert torch.allclose(cov, torch.tensor(np.cov(x.numpy().T)), atol=1e-12)
    # feature sets whose sample mean and covariance are exactly (mu, C): the closed form of those Gaussians
    a = with_moments(torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0])), seed=1)
    b = with_moments(torch.tensor([1.0, 0.0]), torch.diag(torch.tensor([9.0, 4.0])), seed=2)
    assert frechet_distance_of(a, b) == pytest.approx(1.0 + (1.0 - 3.0) ** 2, rel=1e-9)
    c1, c2 = random_spd(3, 3), random_spd(3, 4)
    expected = frechet_distance(torch.zeros(3), c1, torch.ones(3), c2)
    a, b = with_moments(torch.zeros(3), c1, seed=5), with_moments(torch.ones(3), c2, seed=6)
    assert frechet_distance_of(a, b) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match="at least 2 samples"):
        gaussian_fit(x[:1])


def test_class_histogram_and_total_variation_by_hand():
    hist = class_histogram(torch.tensor([0, 0, 1, 3]), 4)
    assert hist.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert total_variation(hist, torch.full((4,), 0.25)) == pytest.approx(0.5 * (0.25 + 0 + 0.25 + 0))
    assert total_variation(hist, hist) == 0.0
    assert total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 1.0


class PixelClassifier(nn.Module):
    """A fixed classifier on 1x2x2 images: features = the 4 pixels, class = the brightest pixel."""

    def __init__(self):
        super().__init__()
        self.pool = nn.Flatten()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.copy_(10 * torch.eye(4))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(x))


def test_scorer_on_a_hand_made_classifier():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    reference = torch.nn.functional.one_hot(labels, 4).double().reshape(40, 1, 2, 2) + 0.1 * torch.randn(
        40, 1, 2, 2, generator=g, dtype=torch.float64
    )
    scorer = ImageScorer(
        PixelClassifier(),
        feature="pool",
        reference=reference.float(),
        reference_labels=labels,
        num_classes=4,
        k=3,
    )
    same = scorer(reference.float())
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == same["recall"] == 1.0
    assert same["class_tv"] == pytest.approx(0.0)
    # samples all of class 2: predicted histogram (0, 0, 1, 0) against the uniform labels: TV = 0.75
    samples = reference[labels == 2].float()
    out = scorer(samples)
    assert out["class_tv"] == pytest.approx(0.75)
    feats = samples.flatten(1).double()
    assert out["fd"] == pytest.approx(frechet_distance_of(reference.flatten(1), feats), rel=1e-5)
    pr = knn_precision_recall(reference.flatten(1), feats, k=3)
    assert out["precision"] == pr["precision"] and out["recall"] == pr["recall"] < 0.5
    assert 0.25 < out["class_conf"] <= 1.0
    with pytest.raises(ConfigError, match="unknown feature name"):
        ImageScorer(
            PixelClassifier(), feature="nope", reference=reference, reference_labels=labels, num_classes=4
        )


def test_evaluate_image_sampler_times_scores_and_draws(tmp_path):
    labels = torch.arange(20) % 4
    reference = torch.nn.functional.one_hot(labels, 4).float().reshape(20, 1, 2, 2)
    scorer = ImageScorer(
        PixelClassifier(), feature="pool", reference=reference, reference_labels=labels, num_classes=4
    )
    out = evaluate_image_sampler(lambda z: z, scorer, n=30, nfe=3, plot_path=tmp_path / "g.png", title="t")
    assert out["nfe"] == 3.0 and out["sec_per_1k"] >= 0 and out["fd"] > 0 and "recall" in out
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    bad = evaluate_image_sampler(
        lambda z: z.masked_fill(torch.arange(len(z))[:, None, None, None] < 3, math.nan), scorer, n=30, nfe=1
    )
    assert bad["nonfinite"] == pytest.approx(0.1) and "fd" not in bad


def test_tile_and_grid(tmp_path):
    images = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 1, 2, 2)
    canvas = tile(images, per_row=3, fill=-1.0)
    assert canvas.shape == (2 * 3 + 1, 3 * 3 + 1)  # 1-pixel gaps, borders too
    assert torch.equal(canvas[1:3, 4:6], images[1, 0]) and torch.equal(canvas[4:6, 4:6], images[4, 0])
    assert (
        canvas[4:6, 7:9].eq(-1).all() and canvas[3].eq(-1).all() and canvas[0].eq(-1).all()
    )  # blank slot, gaps
    image_grid(tmp_path / "grid.png", {"data": images, "model": images + 1})
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_log_figure_sends_the_png_to_loggers_that_take_images(tmp_path):
    from types import SimpleNamespace

    from divlab.metrics.image import log_figure

    image_grid(tmp_path / "grid.png", {"data": torch.zeros(4, 1, 2, 2)})
    seen = []
    tensorboard = SimpleNamespace(
        experiment=SimpleNamespace(
            add_image=lambda tag, img, global_step, dataformats: seen.append(
                ("tb", tag, img.shape, dataformats)
            )
        )
    )
    wandb = SimpleNamespace(log_image=lambda key, images, step: seen.append(("wandb", key, images, step)))
    csv = SimpleNamespace(experiment=SimpleNamespace())  # takes no images: skipped
    log_figure([tensorboard, wandb, csv], "samples", tmp_path / "grid.png", step=7)
    assert seen[0][:2] == ("tb", "samples") and seen[0][2][2] == 3 and seen[0][3] == "HWC"
    assert seen[1] == ("wandb", "samples", [str(tmp_path / "grid.png")], 7) and len(seen) == 2
