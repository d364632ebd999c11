"""divlab: config-driven experiments for training with divergence objectives."""

__version__ = "0.1.0"
