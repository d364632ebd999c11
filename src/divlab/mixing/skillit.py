"""Skill-It (Chen et al., "Skill-it! A Data-Driven Skills Framework for Understanding and Training
Language Models", NeurIPS 2023), online data selection as in Aioli's comparison.

Skills graph (reference code: HazyResearch/aioli mixing_law_fitting.py `skills_graph`): for each
group i, one run trained on group i alone; A_ij = (L_j(start) - L_j(end)) / L_j(start), the relative
drop of group j's validation loss when training on group i.
Online mixture (Alg. 1, reference trainer/skillit_trainer.py): every `update_every` steps evaluate
the per-group validation losses L^t, then
    p_i  propto  exp(eta * sum_j A_ij * sum_{s = t - window + 1}^{t} L_j^s)
and at the start p_i propto exp(eta * sum_j A_ij). Reference settings: update every 500 of 5k
steps, window 3, eta 0.2.
"""

from __future__ import annotations

import numpy as np

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer
from divlab.mixing.runs import first_val_losses, mixer_node, run_with
from divlab.utils.io import read_json


def skills_graph(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A_ij = (start_ij - end_ij) / start_ij; row i = the run trained on group i alone."""
    return (start - end) / start


def skillit_proportions(A: np.ndarray, loss_sum: np.ndarray, eta: float) -> np.ndarray:
    logits = eta * A @ loss_sum
    q = np.exp(logits - logits.max())
    return q / q.sum()


class SkillItMixer(Mixer):
    """Online exponential weights over a skills graph learnt from one-group runs."""

    name = "skillit"

    def __init__(
        self,
        *,
        update_every: int = 500,  # steps between updates
        window: int = 3,  # evaluations summed
        eta: float = 0.2,  # exponential-weights step size
        graph_steps: int | None = None,  # length of each one-group graph run; None = trainer.max_steps
    ) -> None:
        if update_every < 1 or window < 1 or eta < 0:
            raise ConfigError("mixer.update_every and mixer.window must be >= 1 and mixer.eta >= 0.")
        self.update_every, self.window, self.eta, self.graph_steps = update_every, window, eta, graph_steps
        self.graph: list | None = None
        self.losses: list[list[float]] = []

    def prepare(self, cfg) -> None:
        k = len(cfg.data.groups)
        start, end = np.zeros((k, k)), np.zeros((k, k))
        for i in range(k):
            one_hot = [1.0 if j == i else 0.0 for j in range(k)]
            run_dir = run_with(
                cfg,
                mixer_node("static", weights=one_hot),
                max_steps=self.graph_steps,
                why=f"Skill-It graph, group {cfg.data.groups[i]}",
            )
            start[i] = first_val_losses(run_dir)
            metrics = read_json(run_dir / "metrics.json")["metrics"]
            end[i] = [metrics[f"val/loss/{g}"] for g in cfg.data.groups]
        self.graph = skills_graph(start, end).tolist()

    def initial_proportions(self, k: int) -> np.ndarray:
        if self.graph is None:
            raise ConfigError(
                "mixer=skillit learns its graph in prepare(cfg); build the task with "
                "divlab.tasks.mix_lm.build."
            )
        return skillit_proportions(np.asarray(self.graph), np.ones(k), self.eta)

    def on_train_start(self, trainer, task) -> None:
        super().on_train_start(trainer, task)
        task.write_artifact("skillit_graph.json", {"groups": task.groups, "A": self.graph})

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == 0 or step % self.update_every:
            return
        self.losses.append(task.group_losses("val").tolist())
        loss_sum = np.asarray(self.losses[-self.window :]).sum(axis=0)
        task.set_proportions(
            skillit_proportions(np.asarray(self.graph), loss_sum, self.eta), reason="skillit"
        )

    def state_dict(self) -> dict:
        return {"graph": self.graph, "losses": self.losses}

    def load_state_dict(self, state: dict) -> None:
        self.graph = state.get("graph", self.graph)
        self.losses = list(state.get("losses", []))
