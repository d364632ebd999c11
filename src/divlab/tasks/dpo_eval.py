"""Generation metrics of task=dpo on held-out prompts (mixed into divlab.tasks.dpo.DPOTask).

At the end of the test epoch (and of every validation epoch when dpo.generate_val is true) the policy
answers every prompt of the split and the task logs, under `<stage>/`:

- exact_match: % of greedy answers (temperature 0, up to data.datamodule.max_response_tokens tokens) whose
  final integer is the problem's answer (rows with an "answer"; divlab.metrics.generation.exact_match), or that
  the data module's `correct(text, answer)` accepts when it has one (data=preference_arith: the answer string);
- ece: expected calibration error (%, 10 equal-width bins; divlab.metrics.calibration) of the policy's
  confidence in its greedy answer against its correctness. The confidence is the sequence probability of the
  greedy response under the policy, pi_theta(y_greedy | x) = prod_t pi_theta(y_t | x, y_<t) over its tokens,
  eos included (the f-DPO paper, Wang et al. 2023, reports ECE; it states no confidence, this is ours);
  confidence: its mean;
- on dpo.samples samples per prompt at dpo.temperature: distinct_1, distinct_2 (unique / total n-grams of
  the sampled response tokens, eos excluded, pooled over the split; divlab.metrics.text.distinct_n),
  distinct_samples (mean over prompts of the share of distinct responses among its samples: 1/n when every
  sample repeats one answer, 1 when all differ; the diversity of short answers such as arithmetic), entropy
  (mean over the sampled tokens of the policy's per-token entropy H(pi_theta(. | x, y_<t)), nats), and
  kl_seq: the sequence-level KL(pi_theta || pi_ref) estimated on the samples as the mean of
  log pi_theta(y | x) - log pi_ref(y | x) (nats per response; unbiased at dpo.temperature = 1, the default;
  at another temperature it is that mean under the tempered sampler). 0 when the policy is the reference.

Sampling runs under a forked RNG seeded by the task's seed, so the metrics of a checkpoint are reproducible
and the training RNG stream is untouched. Every rank computes the metrics on the whole split (identical).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from divlab.data.instruct import left_padded_batches
from divlab.metrics.calibration import expected_calibration_error
from divlab.metrics.generation import exact_match, final_integer
from divlab.metrics.text import distinct_n
from divlab.objectives.lm import action_mask
from divlab.tasks.lm_distill_eval import response_batch, until_eos
from divlab.utils.signals import terminate_on_sigterm


def response_terms(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """(N,) summed log-probabilities of each row's response and (N,) summed per-token entropies, float32."""
    mask = action_mask(batch["tokens"].shape, prompt_len=batch["prompt_len"], length=batch["length"])
    tokens, length = batch["tokens"], batch["length"]
    attention = torch.arange(tokens.shape[1], device=tokens.device)[None] < length[:, None]
    hidden = model.hidden_states(tokens, attention)[:, :-1][mask]
    logp = torch.log_softmax(hidden.float() @ model.output_weight.float().T, dim=-1)
    token_logp = logp.gather(-1, tokens[:, 1:][mask][:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
    zeros = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device)
    return zeros.index_add(0, rows, token_logp), zeros.index_add(0, rows, entropy)


def diversity(samples: list[list[int]], *, eos_id: int) -> dict[str, float]:
    """distinct-1 and distinct-2 of sampled responses (token ids; eos dropped), pooled."""
    content = [[t for t in s if t != eos_id] for s in samples]
    return {"distinct_1": distinct_n(content, 1), "distinct_2": distinct_n(content, 2)}


def distinct_samples(samples: list[list[int]], *, n: int) -> float:
    """Mean over prompts of the share of distinct responses among its n samples (rows i*n .. i*n + n - 1)."""
    groups = [samples[i : i + n] for i in range(0, len(samples), n)]
    return sum(len({tuple(s) for s in g}) / len(g) for g in groups) / max(len(groups), 1)


class DPOGenerationEval:
    """Held-out generation metrics (module docstring); reads model, reference, seed and the dpo.* settings."""

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], *, n: int, temperature: float) -> list[list[int]]:
        """n responses per prompt (prompt i's at rows i*n .. i*n + n - 1), each cut after its eos (kept)."""
        model, out = self.model, []
        rows = [p for p in prompts for _ in range(n)]
        for batch in left_padded_batches(rows, batch_size=self.eval_batch_size, pad_id=model.pad_id):
            new = model.generate(
                batch["input_ids"].to(self.device),
                batch["attention_mask"].to(self.device),
                max_new_tokens=self.max_new_tokens,
                temperature=temperature,
            )
            out += [
                until_eos(r, eos_id=model.eos_id, pad_id=model.pad_id) or [model.eos_id] for r in new.tolist()
            ]
        return out

    @torch.no_grad()
    def _score(
        self, model: nn.Module, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[Tensor, Tensor]:
        """Summed log-probabilities and entropies of each response under `model`, in eval batches."""
        logps, entropies = [], []
        for lo in range(0, len(prompts), self.eval_batch_size):
            b = response_batch(
                prompts[lo : lo + self.eval_batch_size],
                responses[lo : lo + self.eval_batch_size],
                pad_id=model.pad_id,
            )
            lp, h = response_terms(model, {k: v.to(self.device) for k, v in b.items()})
            logps.append(lp.cpu())
            entropies.append(h.cpu())
        return torch.cat(logps), torch.cat(entropies)

    def generation_metrics(self, split: str) -> dict[str, float]:
        """The metrics of the module docstring on `split`'s prompts, unprefixed."""
        from divlab.provision.responses import decode_response

        dm = self.trainer.datamodule
        prompts = [row[0] for row in dm.dataset(split).rows]
        answers = [e.get("answer") for e in dm.examples(split)]
        was_training = self.model.training
        self.model.eval()
        try:
            greedy = self._generate(prompts, n=1, temperature=0.0)
            logp, _ = self._score(self.model, prompts, greedy)
            tok, eos, pad = self.model.tokenizer, self.model.eos_id, self.model.pad_id
            texts = [decode_response(tok, g, eos_id=eos, pad_id=pad) for g in greedy]
            metrics = {}
            keep = [i for i, a in enumerate(answers) if a is not None]
            if keep:
                judge = getattr(dm, "correct", None)  # the data's own test (preference_arith: the string)
                if judge is None:
                    em = exact_match([texts[i] for i in keep], [answers[i] for i in keep])
                    correct = [final_integer(texts[i]) == int(answers[i]) for i in keep]
                else:
                    correct = [bool(judge(texts[i], answers[i])) for i in keep]
                    em = sum(correct) / len(correct)
                confidence = [math.exp(float(logp[i])) for i in keep]
                metrics["exact_match"] = 100.0 * em
                metrics["ece"] = 100.0 * expected_calibration_error(confidence, correct, bins=10)
                metrics["confidence"] = sum(confidence) / len(confidence)
            if self.samples > 0:
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed)
                    samples = self._generate(prompts, n=self.samples, temperature=self.temperature)
                repeated = [p for p in prompts for _ in range(self.samples)]
                logp, entropy = self._score(self.model, repeated, samples)
                ref_logp, _ = self._score(self.reference, repeated, samples)
                n_tokens = sum(len(s) for s in samples)
                metrics.update(diversity(samples, eos_id=eos))
                metrics["distinct_samples"] = distinct_samples(samples, n=self.samples)
                metrics["entropy"] = float(entropy.sum()) / max(n_tokens, 1)
                metrics["kl_seq"] = float((logp - ref_logp).mean())
        finally:
            self.model.train(was_training)
        return metrics

    def log_generation_metrics(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            return
        with terminate_on_sigterm():  # generation reads no Lightning flag: SIGTERM must end it
            metrics = self.generation_metrics(stage)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", float(value))
