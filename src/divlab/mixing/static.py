"""A static mixture: proportions given up front and fixed for the whole run.

Grid search, DoReMi's final run, the data-mixing law and Skill-It's graph-learning runs are all
static runs with proportions they choose; `weights` may be any non-negative numbers (normalised).
"""

from collections.abc import Sequence

import numpy as np

from divlab.mixing.base import Mixer, normalise_weights


class StaticMixer(Mixer):
    """p = weights / sum(weights) for the whole run."""

    name = "static"

    def __init__(
        self,
        *,
        weights: Sequence[float],  # one non-negative weight per group (normalised to proportions)
    ) -> None:
        self.weights = [float(w) for w in weights]

    def initial_proportions(self, k: int) -> np.ndarray:
        return normalise_weights(self.weights, k, key="mixer.weights")
