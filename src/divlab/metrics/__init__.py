"""Metrics computed from samples (no downloads). Each module adds its names below."""

from divlab.metrics.generative import (  # noqa: F401
    evaluate_sampler,
    evaluate_samples,
    knn_precision_recall,
    mode_statistics,
    sample_divergences,
)
