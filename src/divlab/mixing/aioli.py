"""Aioli (Chen et al., "Aioli: A Unified Optimization Framework for Language Model Data Mixing", ICLR 2025).

Mixing law (the linear dynamic law, Sec. 4): over one round of training on proportions p^t,
    L_i^{t+1} = L_i^t - sum_j A^t_ij p^t_j                          (loss of group i drops linearly in p)
Aioli minimises the average loss under this law by exponentiated gradient (Alg. 1):
    p^{t+1}_j  propto  p^t_j * exp(eta * sum_i A^t_ij)
and estimates A^t online at the start of every round (LearnParams, Alg. 2):
  1. L0 = per-group validation loss now.
  2. For `lp_rounds` sweeps, in a random order of the k groups: train `lp_steps` steps on the
     smoothed one-hot mixture w^(j) (factor f on group j, (1 - f)/(k - 1) on each other group),
     then evaluate; column j of D gets the per-group loss drop since the previous evaluation.
  3. D /= lp_rounds. Each row i satisfies D_i = W a_i with W_jl = w^(j)_l, so A_i = W^{-1} D_i
     ("undoing the smoothing"; with f = 1, W = I and A = D).
  4. Optional normalisation: subtract min(A) if it is negative, then divide by the sum of A.
  5. Optional EMA over rounds: A_ema = (1 - ema) * A + ema * A_ema_prev.
Probe steps are ordinary optimiser steps: they count toward trainer.max_steps, and the remaining
update_every - k * lp_rounds * lp_steps steps of the round train on p^{t+1}.

Restricted setting (Sec. 6.2): `prior` proportions (or `prior_from` = the proportions.json of a
short run of another method) are trained on, static, for `prior_steps` steps; the dynamic rounds
then start from them.

Reference code: HazyResearch/aioli, trainer/aioli_trainer.py. `update` chooses between the two:
  reference   (default) the reference trainer: the dynamic rounds start from uniform weights (also
              after a prior), and with EMA every round restarts from uniform,
                  p^{t+1}_j  propto  exp(eta * sum_i A_ema^t_ij)
              (not compounded); without EMA the first round is exp(eta * colsum A^0) and later rounds
              compound p^t as in Alg. 1.
  cumulative  the paper's Alg. 1 from the current p (the prior's, then each round's), also with EMA.
Reference settings (2 groups): 5k steps, update_every 250, 4 probe rounds x 4 steps, eta 0.2,
one-hot factor 0.625, EMA 0.1, normalised A.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer, normalise_weights
from divlab.utils.io import read_json


def smoothed_one_hot(j: int, k: int, factor: float) -> np.ndarray:
    """w^(j): `factor` on group j, (1 - factor)/(k - 1) on every other group."""
    w = np.full(k, (1.0 - factor) / (k - 1))
    w[j] = factor
    return w


def unsmooth(drops: np.ndarray, factor: float) -> np.ndarray:
    """A with drops[i] = W A[i] for the smoothing matrix W_jl = w^(j)_l (W is symmetric)."""
    k = drops.shape[0]
    if factor == 1.0:
        return drops.copy()
    W = np.stack([smoothed_one_hot(j, k, factor) for j in range(k)])
    return np.linalg.solve(W, drops.T).T  # row i: solve W a = drops[i]


def normalise_A(A: np.ndarray) -> np.ndarray:
    """Shift by the minimum entry if it is negative, then scale to sum 1."""
    A = A - min(A.min(), 0.0)
    total = A.sum()
    return A / total if total > 0 else np.full_like(A, 1.0 / A.size)


def exponentiated_gradient(p: np.ndarray, A: np.ndarray, eta: float) -> np.ndarray:
    """p_j <- p_j exp(eta * sum_i A_ij), renormalised (computed in log space)."""
    logits = np.log(np.maximum(p, 1e-300)) + eta * A.sum(axis=0)
    q = np.exp(logits - logits.max())
    return q / q.sum()


class AioliMixer(Mixer):
    """Online A estimation by probe rounds, then exponentiated-gradient updates of p."""

    name = "aioli"

    def __init__(
        self,
        *,
        update_every: int = 250,  # steps per round (probes included)
        lp_rounds: int = 4,  # sweeps over the k groups per LearnParams
        lp_steps: int = 4,  # steps per probe (one group's smoothed one-hot mixture)
        eta: float = 0.2,  # exponentiated-gradient step size
        one_hot_factor: float = 0.625,  # probe mixture weight on the probed group, in (1/k, 1]
        ema: float | None = 0.1,  # weight of the previous A in the EMA; None: no EMA
        normalize: bool = True,  # shift by min(A) if negative, divide by sum(A)
        diagonal: bool = False,  # keep only A_jj = D_jj / factor (the reference's ablation)
        update: str = "reference",  # "reference": restart from uniform (EMA) | "cumulative": Alg. 1
        prior: Sequence[float] | None = None,  # restricted setting: static weights for the first prior_steps
        prior_from: str | None = None,  # restricted setting: a run dir (or its proportions.json) to take
        # the prior from (its final proportions)
        prior_steps: int = 0,  # steps trained on the prior before the first round
        seed: int = 0,  # probe order
    ) -> None:
        if update_every < 1 or lp_rounds < 1 or lp_steps < 1 or eta < 0 or prior_steps < 0:
            raise ConfigError(
                "mixer.update_every, lp_rounds and lp_steps must be >= 1, eta and prior_steps >= 0."
            )
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ConfigError(f"mixer.ema must be in [0, 1) or null, got {ema}.")
        if prior is not None and prior_from is not None:
            raise ConfigError("set mixer.prior or mixer.prior_from, not both.")
        if update not in ("reference", "cumulative"):
            raise ConfigError(f"mixer.update must be reference or cumulative, got {update!r}.")
        self.update_rule = update
        self.update_every, self.lp_rounds, self.lp_steps = update_every, lp_rounds, lp_steps
        self.eta, self.factor, self.ema, self.normalize, self.diagonal = (
            eta,
            one_hot_factor,
            ema,
            normalize,
            diagonal,
        )
        self.prior, self.prior_from, self.prior_steps, self.seed = prior, prior_from, prior_steps, seed
        self.p_dyn: list[float] | None = None  # p^t of the dynamic rounds
        self.A_ema: list | None = None
        self.rounds: list[dict] = []  # the record saved as aioli_A.json
        self.probe_steps = 0  # steps trained on probe mixtures (they count in the budget)
        self._round: dict | None = None

    # -- schedule -------------------------------------------------------------------------------
    def probe_length(self, k: int) -> int:
        return k * self.lp_rounds * self.lp_steps

    def initial_proportions(self, k: int) -> np.ndarray:
        if self.prior_from is not None:
            path = Path(self.prior_from)
            path = path / "proportions.json" if path.is_dir() else path
            if not path.is_file():
                raise ConfigError(
                    f"mixer.prior_from={self.prior_from} has no proportions.json; give a finished "
                    "mix_lm run directory."
                )
            return normalise_weights(read_json(path)["final"], k, key="mixer.prior_from's final proportions")
        if self.prior is not None:
            return normalise_weights(self.prior, k, key="mixer.prior")
        return np.full(k, 1.0 / k)

    def on_train_start(self, trainer, task) -> None:
        k = task.k
        if not 1.0 / k < self.factor <= 1.0:
            raise ConfigError(
                f"mixer.one_hot_factor must be in (1/k, 1] = ({1 / k:.3f}, 1], got {self.factor}."
            )
        if self.update_every <= self.probe_length(k):
            raise ConfigError(
                f"mixer.update_every={self.update_every} must exceed the probe steps per round "
                f"k * lp_rounds * lp_steps = {self.probe_length(k)}."
            )
        if trainer.global_step == 0:
            p0 = self.initial_proportions(k)
            self.p_dyn = [float(v) for v in p0]
            task.set_proportions(p0, reason="prior" if self.prior_steps else "aioli")

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        step, k = int(trainer.global_step), task.k
        if step < self.prior_steps:
            return
        offset = (step - self.prior_steps) % self.update_every
        n_probes = k * self.lp_rounds
        if offset == 0:  # a round starts: L0, then the first probe
            order = np.concatenate(
                [np.random.default_rng([self.seed, step, r]).permutation(k) for r in range(self.lp_rounds)]
            )
            self._round = {
                "step": step,
                "order": order.tolist(),
                "L0": task.group_losses("val").tolist(),
                "D": np.zeros((k, k)).tolist(),
            }
            self._round["prev"] = self._round["L0"]
        if self._round is None or offset > n_probes * self.lp_steps:
            return
        if offset > 0 and offset % self.lp_steps == 0:  # a probe just ended: its loss drops
            j = self._round["order"][offset // self.lp_steps - 1]
            now = task.group_losses("val")
            D = np.asarray(self._round["D"])
            D[:, j] += np.asarray(self._round["prev"]) - now
            self._round["D"], self._round["prev"] = D.tolist(), now.tolist()
        if offset < n_probes * self.lp_steps:
            j = self._round["order"][offset // self.lp_steps]
            task.set_proportions(smoothed_one_hot(j, k, self.factor), reason=f"probe {task.groups[j]}")
            self.probe_steps += 1
        else:  # probes done: estimate A, update p
            task.set_proportions(
                self.update(np.asarray(self._round["D"]) / self.lp_rounds, step=step, task=task),
                reason="aioli",
            )

    # -- LearnParams output -> p ------------------------------------------------------------------
    def update(self, D: np.ndarray, *, step: int, task=None) -> np.ndarray:
        """A from the averaged drops D (k x k, column j = probe of group j), then the EG step on p."""
        k = D.shape[0]
        A_raw = np.diag(np.diag(D) / self.factor) if self.diagonal else unsmooth(D, self.factor)
        A = normalise_A(A_raw) if self.normalize else A_raw
        if self.ema is not None and self.A_ema is not None:
            A_used = (1.0 - self.ema) * A + self.ema * np.asarray(self.A_ema)
        else:
            A_used = A
        first = self.A_ema is None
        self.A_ema = A_used.tolist()
        p_before = np.asarray(self.p_dyn if self.p_dyn is not None else np.full(k, 1.0 / k))
        restart = self.update_rule == "reference" and (first or self.ema is not None)
        p = exponentiated_gradient(np.full(k, 1.0 / k) if restart else p_before, A_used, self.eta)
        self.p_dyn = p.tolist()
        self.rounds.append(
            {
                "round": len(self.rounds),
                "step": step,
                "D": D.tolist(),
                "A_unsmoothed": A_raw.tolist(),
                "A": A.tolist(),
                "A_used": A_used.tolist(),
                "p_before": p_before.tolist(),
                "p_after": p.tolist(),
                "restarted_from_uniform": bool(restart),
                **({"L0": self._round["L0"], "order": self._round["order"]} if self._round else {}),
            }
        )
        if task is not None:
            task.write_artifact("aioli_A.json", {"groups": task.groups, "rounds": self.rounds})
        return p

    def on_train_end(self, trainer, task) -> None:
        task.write_artifact(
            "aioli_A.json", {"groups": task.groups, "rounds": self.rounds, "probe_steps": self.probe_steps}
        )
        trainer.callback_metrics["train/probe_steps"] = torch.tensor(float(self.probe_steps))

    def state_dict(self) -> dict:
        return {
            "p_dyn": self.p_dyn,
            "A_ema": self.A_ema,
            "rounds": self.rounds,
            "probe_steps": self.probe_steps,
            "round": self._round,
        }

    def load_state_dict(self, state: dict) -> None:
        self.p_dyn, self.A_ema = state.get("p_dyn"), state.get("A_ema")
        self.rounds, self.probe_steps = list(state.get("rounds", [])), int(state.get("probe_steps", 0))
        self._round = state.get("round")
