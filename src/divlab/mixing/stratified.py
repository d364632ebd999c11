"""Stratified sampling: every group in equal proportion, all run long (the baseline of Aioli's Table 2)."""

from divlab.mixing.base import Mixer


class StratifiedMixer(Mixer):
    """p = (1/k, ..., 1/k) for the whole run."""

    name = "stratified"
