"""What every mixer shares: a Lightning callback that sets the task's mixture proportions.

A mixer talks to the `task=mix_lm` module (`divlab.tasks.mix_lm.MixLMTask`) through five things:
`task.proportions` (the sampler's p), `task.set_proportions(p, reason=...)` (the same p on every
rank), `task.group_losses("val")` (per-group validation loss now, all-reduced),
`task.write_artifact(name, obj)` (JSON in the run directory, rank 0) and `task.loss_fn(logits, targets,
reduction="none")` (the task's per-token loss; mixers import no task). Mixers that learn from other
runs (grid search, DoReMi, Skill-It, the data-mixing law) do those runs in `prepare(cfg)`, which the
task builder calls before the model is built (see `divlab.mixing.runs`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from divlab.errors import ConfigError


def uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def normalise_weights(weights, k: int, *, key: str) -> np.ndarray:
    """Non-negative weights (any positive sum) as proportions; one sentence naming `key` if bad."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(
            f"{key} must be {k} non-negative numbers with a positive sum (one per group), got {list(w)}."
        )
    return w / w.sum()


class Mixer(pl.Callback):
    """Base mixer: uniform proportions, fixed. Subclasses override the hooks they need."""

    name = "mixer"

    def prepare(self, cfg) -> None:
        """Runs other trainings this mixer learns from (before the model is built); default none."""

    def initial_proportions(self, k: int) -> np.ndarray:
        return uniform(k)

    def loss_weights(self, task, group_losses: torch.Tensor, x, y, groups) -> torch.Tensor | None:
        """Per-group weights of the training loss (DoReMi's proxy); None = the plain batch mean."""
        return None

    def on_train_start(self, trainer, task) -> None:
        if trainer.global_step == 0:  # a resumed run keeps its restored proportions
            task.set_proportions(self.initial_proportions(task.k), reason=self.name)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
