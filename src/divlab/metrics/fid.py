"""Sample-quality metrics of image generators at paper scale: FID (Heusel et al. 2017), Inception Score
(Salimans et al. 2016) and improved precision / recall (Kynkaanniemi et al. 2019, k-NN balls), computed
by torchmetrics (FrechetInceptionDistance, InceptionScore) on torch-fidelity's Inception-v3
("inception-v3-compat", the TF-FID network: pool3 2048-d features for FID and precision/recall,
unbiased logits for IS).

Images enter as uint8 (N, 3, H, W) in [0, 255] (Inception resizes them to 299 itself). The Inception
weights are torch-fidelity's (`pt_inception-2015-12-05`): downloaded into the torch hub cache when online,
or read from `weights_path`; offline and not cached, building the metrics fails in one sentence. Tests
pass stand-in extractors (any nn.Module taking uint8 images to (N, d) features / (N, K) logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from divlab.errors import ConfigError

__all__ = [
    "inception_extractors",
    "GenerativeScores",
    "knn_precision_recall_chunked",
    "to_uint8",
    "PooledPixels",
]

PR_CHUNK = 4096  # rows of the distance matrix computed at a time


def inception_extractors(weights_path: str | None = None) -> tuple[nn.Module, nn.Module]:
    """(pool3 features, unbiased logits) extractors of torch-fidelity's Inception-v3."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except (ImportError, ModuleNotFoundError):
        raise ConfigError(
            "FID needs torch-fidelity for the Inception-v3 network; pip install torch-fidelity"
        ) from None
    try:
        pool = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
        )
        logits = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["logits_unbiased"],
            feature_extractor_weights_path=weights_path,
        )
    except ModuleNotFoundError:
        raise ConfigError(
            "FID needs torch-fidelity for the Inception-v3 network; pip install torch-fidelity"
        ) from None
    except Exception as e:  # urllib / OSError / hub errors when offline and the weights are not cached
        raise ConfigError(
            f"the Inception-v3 weights (torch-fidelity's pt_inception-2015-12-05) could not be loaded "
            f"({type(e).__name__}); run once online to cache them, or set evaluate.inception_weights "
            f"to a local copy of the file"
        ) from None
    return pool, logits


class PooledPixels(nn.Module):
    """Stand-in extractor for tests and offline smoke runs (not a quality metric): uint8 images -> pixels in
    [0, 1] average-pooled to size x size, flattened (3 size^2 features)."""

    def __init__(self, *, size: int = 4, channels: int = 3):  # pooled side; image channels
        super().__init__()
        self.size, self.num_features = size, channels * size * size

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0
        return nn.functional.adaptive_avg_pool2d(x, self.size).flatten(1)


def to_uint8(images: Tensor, *, low: float, high: float) -> Tensor:
    """Float images in [low, high] -> uint8 [0, 255] (clamped, rounded)."""
    return ((images.float() - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8)


def knn_precision_recall_chunked(real: Tensor, fake: Tensor, *, k: int = 3) -> dict[str, float]:
    """Improved precision / recall with k-NN balls (Kynkaenniemi et al. 2019, eq. 1-2), distances in chunks."""

    def radii(x: Tensor) -> Tensor:
        return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(PR_CHUNK)])

    def inside(points: Tensor, centres: Tensor, r: Tensor) -> Tensor:
        return torch.cat([(torch.cdist(c, centres) <= r[None, :]).any(1) for c in points.split(PR_CHUNK)])

    real, fake = real.float(), fake.float()
    r_real, r_fake = radii(real), radii(fake)
    return {
        "precision": float(inside(fake, real, r_real).float().mean()),
        "recall": float(inside(real, fake, r_fake).float().mean()),
    }


class GenerativeScores:
    """FID, IS and precision/recall of generated images against reference images (both uint8 batches)."""

    def __init__(
        self,
        *,
        pool: nn.Module,  # uint8 images -> (N, d) features (FID, precision/recall)
        logits: nn.Module | None,  # uint8 images -> (N, K) logits (IS); None: no IS
        knn_k: int = 3,  # k of the k-NN balls
        pr_samples: int = 10_000,  # images of each set used for precision/recall (distances are N^2)
        is_splits: int = 10,  # IS splits (its std is reported too)
        device: torch.device | str = "cpu",
    ):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        if knn_k < 1 or pr_samples < knn_k + 1:
            raise ConfigError(
                f"evaluate.knn_k must be >= 1 and evaluate.pr_samples > knn_k, got {knn_k}, {pr_samples}"
            )
        self.device = torch.device(device)
        self.pool = pool.to(self.device).eval()
        self.fid = FrechetInceptionDistance(feature=self.pool, reset_real_features=False).to(self.device)
        self.inception_score = (
            InceptionScore(feature=logits.to(self.device).eval(), splits=is_splits).to(self.device)
            if logits is not None
            else None
        )
        self.knn_k, self.pr_samples = knn_k, pr_samples
        self.real_feats: list[Tensor] = []
        self.fake_feats: list[Tensor] = []
        self.n_real = self.n_fake = 0

    def _keep(self, store: list[Tensor], images: Tensor, seen: int) -> None:
        room = self.pr_samples - seen
        if room > 0:
            with torch.no_grad():
                store.append(self.pool(images[:room]).reshape(min(room, len(images)), -1).float().cpu())

    @torch.no_grad()
    def add_reference(self, images: Tensor) -> None:
        images = images.to(self.device)
        self.fid.update(images, real=True)
        self._keep(self.real_feats, images, self.n_real)
        self.n_real += len(images)

    @torch.no_grad()
    def add_generated(self, images: Tensor) -> None:
        images = images.to(self.device)
        self.fid.update(images, real=False)
        if self.inception_score is not None:
            self.inception_score.update(images)
        self._keep(self.fake_feats, images, self.n_fake)
        self.n_fake += len(images)

    def compute(self) -> dict[str, float]:
        if self.n_real < 2 or self.n_fake < 2:
            raise ConfigError(
                f"FID needs at least 2 reference and 2 generated images, got {self.n_real} and "
                f"{self.n_fake}; raise evaluate.num_samples or the reference split's size"
            )
        out = {
            "fid": float(self.fid.compute()),
            "num_generated": float(self.n_fake),
            "num_reference": float(self.n_real),
        }
        if self.inception_score is not None:
            mean, std = self.inception_score.compute()
            out.update(inception_score=float(mean), inception_score_std=float(std))
        real, fake = torch.cat(self.real_feats), torch.cat(self.fake_feats)
        if min(len(real), len(fake)) > self.knn_k:
            out.update(knn_precision_recall_chunked(real, fake, k=self.knn_k))
        return out


def score_generator(
    generate: Callable[[int, int], Tensor],
    reference: Iterable[Tensor],
    scores: GenerativeScores,
    *,
    num_samples: int,
    batch_size: int,
) -> dict[str, float]:
    """Feed reference batches, then `generate(batch_index, n)` uint8 batches until num_samples, and compute."""
    for images in reference:
        scores.add_reference(images)
    done, i = 0, 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        scores.add_generated(generate(i, n))
        done, i = done + n, i + 1
    return scores.compute()
