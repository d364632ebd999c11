"""DoReMi (Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining", NeurIPS 2023).

Three runs, as in Aioli's comparison (reference code: HazyResearch/aioli trainer/doremi_trainer.py):
  1. reference: a stratified run (the `mixer=stratified` run itself, reused);
  2. proxy: stratified sampling, and at every step Group DRO on the excess loss (Alg. 1):
        lambda_g = max(L_g(proxy) - L_g(reference), 0)            per-group mean loss on this batch
        log alpha <- log alpha + mu * lambda;  alpha <- softmax     (groups absent from the batch keep
        alpha <- (1 - eps) * alpha + eps / k                          their previous excess loss)
     and the proxy's loss is sum_g alpha_g L_g(proxy); the output is the mean of alpha over steps;
  3. final: a static run on that mean (this run).
Settings of the reference code: mu = 0.01 over 10k proxy steps, eps = 1e-3; `mu` must grow as
the proxy run shrinks (the experiment configs say by how much).

Where the excess loss is clipped (`clip`):
  group  (default) lambda_g = max(mean_{tokens of g} L(proxy) - mean_{tokens of g} L(reference), 0): the
         group-mean excess is clipped, as in Aioli's DoReMi trainer (the comparison the mixing table runs).
  token  lambda_g = mean_{tokens of g} max(L_tok(proxy) - L_tok(reference), 0): every token's excess is
         clipped before the group average, as in the DoReMi paper (Alg. 1, per-token excess loss) and its
         code (sangmichaelxie/doremi, doremiv1 domain-weight update). It needs the proxy's per-token
         losses, so the proxy is run once more under no_grad on the batch (same weights; with dropout > 0
         the mask differs from the training forward's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer
from divlab.mixing.runs import mixer_node, run_with
from divlab.utils.io import read_json


class DoReMiMixer(Mixer):
    """role=final: run reference and proxy, then train static on the proxy's mean weights.
    role=proxy: the Group-DRO proxy run against `reference` (a checkpoint)."""

    name = "doremi"

    def __init__(
        self,
        *,
        role: str = "final",  # "final" (the method) or "proxy" (its second run)
        mu: float = 0.01,  # step size of the domain-weight update
        smoothing: float = 1e-3,  # eps: mix alpha with uniform
        proxy_steps: int | None = None,  # proxy run length; None = trainer.max_steps
        reference: str | None = None,  # proxy only: the reference run's checkpoint
        clip: str = "group",  # clip the group-mean excess (Aioli) | each token's (DoReMi paper)
    ) -> None:
        if role not in ("final", "proxy"):
            raise ConfigError(f"mixer.role must be final or proxy, got {role!r}.")
        if clip not in ("group", "token"):
            raise ConfigError(f"mixer.clip must be group or token, got {clip!r}.")
        self.clip = clip
        if role == "proxy" and not reference:
            raise ConfigError("mixer.role=proxy needs mixer.reference (the reference run's checkpoint).")
        self.role, self.mu, self.smoothing, self.proxy_steps, self.reference = (
            role,
            mu,
            smoothing,
            proxy_steps,
            reference,
        )
        self.weights: list[float] | None = None  # final: the proxy's mean alpha
        self.alpha: torch.Tensor | None = None  # proxy: current alpha
        self.alpha_sum: torch.Tensor | None = None
        self.updates = 0
        self.scores: torch.Tensor | None = None  # last excess loss per group
        self.reference_model = None

    # -- final run ------------------------------------------------------------------------------
    def prepare(self, cfg) -> None:
        if self.role != "final":
            return
        ref_dir = run_with(cfg, mixer_node("stratified"), why="DoReMi reference")
        node = mixer_node(
            "doremi",
            role="proxy",
            mu=self.mu,
            smoothing=self.smoothing,
            proxy_steps=None,
            reference=str(ref_dir / "checkpoints" / "last.ckpt"),
            clip=self.clip,
        )
        proxy_dir = run_with(cfg, node, max_steps=self.proxy_steps, why="DoReMi proxy")
        self.weights = list(read_json(proxy_dir / "doremi.json")["mean_alpha"])

    def initial_proportions(self, k: int) -> np.ndarray:
        if self.role == "proxy":
            return np.full(k, 1.0 / k)  # the proxy samples stratified
        if self.weights is None:
            raise ConfigError(
                "mixer=doremi learns its weights in prepare(cfg); build the task with "
                "divlab.tasks.mix_lm.build."
            )
        return np.asarray(self.weights)

    # -- proxy run ------------------------------------------------------------------------------
    def setup(self, trainer, task, stage: str) -> None:
        if self.role != "proxy" or self.reference_model is not None:
            return
        import copy

        from divlab.provision.teacher import freeze, load_weights, read_divlab_checkpoint

        path = Path(self.reference)
        ckpt = read_divlab_checkpoint(path, key="mixer.reference")
        self.reference_model = copy.deepcopy(task.model)
        load_weights(self.reference_model, ckpt, key="mixer.reference", path=path)
        freeze(self.reference_model)
        k = task.k
        self.alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.alpha_sum = torch.zeros(k, dtype=torch.float64)
        self.scores = torch.zeros(k, dtype=torch.float64)

    def loss_weights(self, task, group_losses, x, y, groups):
        if self.role != "proxy":
            return None
        k = task.k
        self.reference_model.to(x.device)
        with torch.no_grad():
            ref_tok = task.loss_fn(self.reference_model(x), y, reduction="none")  # (B, T)
            counts = torch.bincount(groups, minlength=k)
            if self.clip == "token":  # clip per token, then average (DoReMi paper)
                clipped = (
                    (task.loss_fn(task.model(x), y, reduction="none") - ref_tok).clamp(min=0.0).mean(dim=1)
                )
                model_g = torch.zeros(k, dtype=clipped.dtype, device=clipped.device).index_add(
                    0, groups, clipped
                )
                model_g, ref = model_g / counts.clamp(min=1), torch.zeros_like(model_g)
            else:  # group means, clipped below after the difference
                tok = ref_tok.mean(dim=1)
                ref = torch.zeros(k, dtype=tok.dtype, device=tok.device).index_add(0, groups, tok)
                ref, model_g = ref / counts.clamp(min=1), group_losses.detach().to(tok.dtype)
            if task.trainer.world_size > 1:  # every rank: the same excess loss, the same alpha
                sums = torch.stack([model_g * counts, ref * counts, counts.to(ref.dtype)])
                sums = task.trainer.strategy.reduce(sums, reduce_op="sum")
                counts = sums[2]
                model_g, ref = sums[0] / counts.clamp(min=1), sums[1] / counts.clamp(min=1)
            excess = (model_g - ref).double().cpu().clamp(min=0.0)
            present = counts.cpu() > 0
            self.scores = torch.where(present, excess, self.scores)
            log_alpha = torch.log(self.alpha) + self.mu * self.scores
            alpha = torch.softmax(log_alpha, dim=0)
            self.alpha = (1 - self.smoothing) * alpha + self.smoothing / k
            self.alpha_sum += self.alpha
            self.updates += 1
        return self.alpha.to(group_losses.device, group_losses.dtype)

    def on_train_end(self, trainer, task) -> None:
        if self.role == "proxy":
            mean = (self.alpha_sum / max(self.updates, 1)).tolist()
            task.write_artifact(
                "doremi.json",
                {
                    "groups": task.groups,
                    "mean_alpha": mean,
                    "last_alpha": self.alpha.tolist(),
                    "updates": self.updates,
                },
            )
        else:
            task.write_artifact("doremi.json", {"groups": task.groups, "mean_alpha": self.weights})

    def state_dict(self) -> dict:
        if self.role != "proxy" or self.alpha is None:
            return {"weights": self.weights}
        return {
            "weights": self.weights,
            "alpha": self.alpha.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "updates": self.updates,
            "scores": self.scores.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.weights = state.get("weights", self.weights)
        if "alpha" in state:
            self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
            self.alpha_sum = torch.tensor(state["alpha_sum"], dtype=torch.float64)
            self.updates, self.scores = state["updates"], torch.tensor(state["scores"], dtype=torch.float64)
