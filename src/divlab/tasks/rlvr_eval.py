"""The evaluation half of `RLVRTask` (task=rlvr): pass@k on held-out problems of the RL operations, pass@1 on
the other operations (forgetting), and at test time the same for the start model. A mixin: it reads the task's
model, reference, tokenizer, reward and sampling settings, and holds no state of its own.

Each held-out problem gets n = rlvr.n_eval_samples completions at rlvr.temperature (a completion is correct when
its reward is > 0); pass@k is the unbiased estimator of Chen et al. 2021 (divlab.metrics.pass_at_k), logged per
batch weighted by its number of problems. The policy and the start model draw from the same seeded generator.
"""

from __future__ import annotations

import torch
from torch import nn

from divlab.metrics.pass_at_k import mean_pass_at_k
from divlab.tasks.rlvr_rollout import op_of, problem_texts, rewards, sample_completions


class RLVREvaluation:
    @torch.no_grad()
    def correct_counts(self, model: nn.Module, batch: dict, batch_idx: int, prompts, answers) -> torch.Tensor:
        """(B,) number of correct completions among n_eval_samples per problem (reward > 0 counts as correct)."""
        n = self.n_eval_samples
        done = sample_completions(
            model,
            batch["tokens"],
            batch["prompt_len"],
            n=n,
            tokenizer=self.tokenizer,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            generator=self.generator(batch_idx, stream=5, device=self.device),  # policy and start alike
        )
        reward = rewards(self.reward, self.reward_name, prompts, answers, done, n)
        return (reward > 0).view(-1, n).sum(dim=1).cpu()

    def _log_eval(self, stage: str, batch: dict, batch_idx: int) -> None:
        prompts, answers = problem_texts(
            batch["tokens"], batch["prompt_len"], batch["length"], self.tokenizer
        )
        trained = torch.tensor([op_of(p) in self.train_ops for p in prompts])
        models = [("", self.model)] + ([("start_", self.reference)] if stage == "test" else [])
        other = {}
        for prefix, model in models:
            counts = self.correct_counts(model, batch, batch_idx, prompts, answers)
            n = self.n_eval_samples
            if trained.any():
                for k in self.pass_k:
                    value = mean_pass_at_k(n, counts[trained].tolist(), k)
                    self.log(
                        f"{stage}/{prefix}pass_at_{k}", value, batch_size=int(trained.sum()), sync_dist=True
                    )
            if (~trained).any():
                other[prefix] = mean_pass_at_k(n, counts[~trained].tolist(), 1)
                self.log(
                    f"{stage}/{prefix}other_pass_at_1",
                    other[prefix],
                    batch_size=int((~trained).sum()),
                    sync_dist=True,
                )
        if len(other) == 2:
            self.log(
                f"{stage}/forgetting",
                other["start_"] - other[""],
                batch_size=int((~trained).sum()),
                sync_dist=True,
            )

    def validation_step(self, batch, batch_idx):
        self._log_eval("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/pass_at_1")
        if value is not None:
            self.update_best(float(value))

    def test_step(self, batch, batch_idx):
        self._log_eval("test", batch, batch_idx)
