"""Sample-quality metrics for images that need no download: a fixed classifier trained once on the
data set (the cached KD teacher, e.g. teacher=digits_cnn on digits) stands in for Inception.

- frechet_distance: FD between Gaussians fitted to the classifier's penultimate features of the
  samples and of the reference images (Heusel et al. 2017, eq. 6; "FID" with a digits classifier):
      FD = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^(1/2) C_2 C_1^(1/2))^(1/2))
  in float64; the matrix square root comes from symmetric eigendecompositions (both covariances are
  positive semi-definite), so it is exact up to rounding, and identical feature sets give 0.
- class_tv: total variation between the histogram of the classifier's predicted classes of the
  samples and the class frequencies of the reference labels (stratified splits: about uniform).
- class_conf: mean top-class probability of the samples (blurry or non-digit samples score low).
- precision / recall: k-NN precision and recall (divlab.metrics.generative) in the same feature space.
- image_grid: a PNG of side-by-side sample grids (data | teacher | student), like the 2-D scatter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.metrics.generative import KNN_K, knn_precision_recall, save_figure


def _sqrt_psd(c: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative rounding noise clipped)."""
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """|mu_1 - mu_2|^2 + tr(C_1) + tr(C_2) - 2 tr((C_1^(1/2) C_2 C_1^(1/2))^(1/2)), in float64."""
    mu1, cov1, mu2, cov2 = (t.detach().double().cpu() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of (n, d) features, in float64."""
    f = features.detach().double().cpu()
    if len(f) < 2:
        raise ConfigError(
            f"a Frechet distance needs at least 2 samples, got {len(f)}; raise the eval sample count"
        )
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance_of(features_a: Tensor, features_b: Tensor) -> float:
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def class_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """Share of each class among integer labels, float64."""
    return torch.bincount(labels.detach().long().cpu(), minlength=num_classes).double() / max(len(labels), 1)


def total_variation(p: Tensor, q: Tensor) -> float:
    """TV(p, q) = 0.5 sum |p - q| of two histograms."""
    return 0.5 * float((p.double() - q.double()).abs().sum())


class ImageScorer:
    """Scores image samples with a frozen classifier: its predicted classes and the features of the module
    named `feature` (the penultimate layer), against a reference set of images and labels."""

    def __init__(
        self,
        classifier: nn.Module,
        *,
        feature: str,  # module whose output is the feature vector (e.g. "pool" of SmallCNN)
        reference: Tensor,  # (m, C, H, W) reference images (the test split)
        reference_labels: Tensor,  # (m,) their true classes
        num_classes: int,  # length of the class histogram
        k: int = KNN_K,  # neighbours of the k-NN precision / recall
        batch_size: int = 512,
    ):  # classifier batch
        from divlab.models.features import FeatureTaps

        self.classifier = classifier.eval().requires_grad_(False)
        self.taps = FeatureTaps(
            self.classifier, [feature]
        )  # checks the name; hooks stay for the scorer's life
        self.feature, self.num_classes, self.k, self.batch_size = feature, num_classes, k, batch_size
        self.reference, self.reference_labels = reference, reference_labels
        self._reference_features = None

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(class probabilities (n, K), features (n, d)) of images, computed on the classifier's device."""
        device = next(self.classifier.parameters()).device
        probs, feats = [], []
        for chunk in images.split(self.batch_size):
            logits, taps = self.taps(chunk.to(device=device, dtype=torch.float32))
            probs.append(logits.float().softmax(-1).cpu())
            feats.append(taps[self.feature].flatten(1).double().cpu())
        return torch.cat(probs), torch.cat(feats)

    def to(self, device) -> ImageScorer:
        self.classifier.to(device)
        return self

    def reference_features(self) -> Tensor:
        if self._reference_features is None:
            self._reference_features = self.embed(self.reference)[1]
        return self._reference_features

    def __call__(self, samples: Tensor) -> dict[str, float]:
        probs, feats = self.embed(samples)
        ref = self.reference_features()
        hist = class_histogram(probs.argmax(-1), self.num_classes)
        out = {
            "fd": frechet_distance_of(ref, feats),
            "class_tv": total_variation(hist, class_histogram(self.reference_labels, self.num_classes)),
            "class_conf": float(probs.max(-1).values.double().mean()),
        }
        out.update(knn_precision_recall(ref, feats, k=self.k))
        return out


@torch.no_grad()
def evaluate_image_sampler(
    sampler: Callable[[Tensor], Tensor],
    scorer: ImageScorer,
    *,
    n: int,
    nfe: int,
    seed: int = 0,
    device=None,
    plot_path: Path | None = None,
    title: str = "",
    grid_images: int = 100,
) -> dict[str, float]:
    """Draw n images from `sampler(latents)` (latents ~ N(0, I) of the reference's shape, seeded as
    divlab.metrics.generative.evaluate_sampler), time them, score them with `scorer`, and draw a grid
    of the first `grid_images` next to the reference images at `plot_path`."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    latents = torch.randn(n, *scorer.reference.shape[1:], generator=gen).to(device or "cpu")
    start = time.perf_counter()
    samples = sampler(latents)
    seconds = time.perf_counter() - start
    samples = samples.detach().float().cpu()
    timing = {"nfe": float(nfe), "sec_per_1k": seconds * 1000 / n}
    if not torch.isfinite(samples).all():
        return {"nonfinite": float((~torch.isfinite(samples)).flatten(1).any(1).double().mean()), **timing}
    if plot_path is not None:
        image_grid(
            plot_path,
            {"data (test)": scorer.reference[:grid_images], "samples": samples[:grid_images]},
            title=title,
        )
    return {**scorer(samples), **timing}


def build_image_scorer(cfg, datamodule) -> ImageScorer | None:
    """The ImageScorer of cfg.image_metrics (None when the config has none): the classifier
    `image_metrics.classifier` (a teacher config, trained once on `image_metrics.data` and cached by
    divlab.provision.teacher exactly as a KD teacher, so the KD teacher's cache file is reused) and the test split;
    None for 2-D data and for `image_metrics: pixels` (no classifier: sample metrics on pixel vectors)."""
    from omegaconf import open_dict

    from divlab.provision.teacher import provision_teacher
    from divlab.utils.checks import build as build_spec

    m = cfg.get("image_metrics")
    if m == "pixels":  # the sample metrics of divlab.metrics.generative on pixel vectors (FID: task=evaluate)
        return None
    if m is None:
        if len(datamodule.input_shape) > 1:
            raise ConfigError(
                f"data={cfg.data.name} holds images, whose samples are scored by a classifier; "
                f"set image_metrics (experiment=onestep/digits shows how), or image_metrics=pixels"
            )
        return None
    for key in ("classifier", "data", "feature"):
        if m.get(key) is None:
            raise ConfigError(
                f"image_metrics.{key} must be set (see conf/experiment/onestep/_digits_common.yaml)"
            )
    if m.classifier.get("train", {}).get("task", "classify") != "classify":
        raise ConfigError("image_metrics.classifier must be a classifier config (e.g. teacher=digits_cnn's)")
    sub = cfg.copy()
    with open_dict(sub):
        sub.teacher, sub.data = m.classifier, m.data  # the KD teacher's cache key: model, data, recipe
    classifier = provision_teacher(sub, build_spec(sub.teacher.model))
    return ImageScorer(
        classifier,
        feature=m.feature,
        reference=datamodule.points("test"),
        reference_labels=datamodule.labels("test"),
        num_classes=int(m.data.num_classes),
        k=m.get("knn_k", KNN_K),
    )


def image_grid(path: Path, panels: dict[str, Tensor], *, per_row: int = 10, title: str = "") -> None:
    """Side-by-side grids of (n, C, H, W) images (matplotlib, Agg backend), saved to `path`; the first
    panel (the data) fixes the grey scale of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(panels.values())).detach().float().cpu()
    low, high = float(first.min()), float(first.max())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels.items()):
        ax.imshow(
            tile(images.detach().float().cpu(), per_row=per_row, fill=low),
            cmap="gray_r",
            vmin=low,
            vmax=high,
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    save_figure(fig, path, title=title)


def tile(images: Tensor, *, per_row: int, fill: float, pad: int = 1) -> Tensor:
    """(n, C, H, W) -> one image of the first channel, `per_row` images per row with `pad` pixels of `fill`
    around each (torchvision.utils.make_grid)."""
    from torchvision.utils import make_grid

    return make_grid(images[:, :1], nrow=per_row, padding=pad, pad_value=float(fill))[0]


def log_figure(loggers, tag: str, path: Path, step: int = 0) -> None:
    """Send a saved PNG to the loggers that take images (TensorBoard, W&B); the CSV logger takes none."""
    import matplotlib.image

    image = None
    for logger in loggers or ():
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=tag, images=[str(path)], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoardLogger
            if image is None:
                image = matplotlib.image.imread(str(path))[..., :3]
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
