"""A divlab GPT as task=dpo's policy: the interface the f-DPO task reads of a Hugging Face policy.

task=dpo (divlab.tasks.dpo, dpo_eval) and divlab.provision.rejected call `hidden_states(tokens, attention)` on
right-padded rows, `output_weight` (logits = hidden @ output_weight.T), `generate(input_ids, attention_mask,
max_new_tokens=, temperature=)` on left-padded prompts (the new tokens, pad after the first eos),
`tokenizer.decode(ids, skip_special_tokens=True)`, `vocab_size`, `context_length`, `pad_id` and `eos_id`.
`GPTPolicy` gives a divlab GPT (divlab.models.gpt) with its character tokenizer that interface.

`gpt_policy` builds it for a run: the student GPT with the data's vocabulary, started (dpo.init) from an MLE
model of the same architecture trained once per seed on the data's arithmetic problems and cached like a
teacher (divlab.tasks.seqmatch.start_from_behaviour_cloning, the mechanism of seqmatch.init and rlvr.init),
or loaded from a divlab checkpoint path; dpo.init=null keeps the GPT as built.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from divlab.errors import ConfigError


class CharDecoder:
    """`decode(ids, skip_special_tokens=True)` of a divlab tokenizer (its specials are always skipped)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids)


class GPTPolicy(nn.Module):
    """A divlab GPT behind the policy interface of task=dpo (module docstring)."""

    def __init__(
        self,
        *,
        gpt: nn.Module,  # a divlab.models.GPT whose LM head has no bias
        tokenizer,  # its divlab tokenizer (pad_id, eos_id, decode)
    ):
        super().__init__()
        self.gpt = gpt
        self.tokenizer = CharDecoder(tokenizer)
        self.vocab_size, self.context_length = int(gpt.vocab_size), int(gpt.context_length)
        self.pad_id, self.eos_id = int(tokenizer.pad_id), int(tokenizer.eos_id)

    def hidden_states(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, L, C) final hidden states of right-padded rows (causal: padding after a row never changes it)."""
        if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
            raise ValueError("GPTPolicy.hidden_states expects right-padded rows: the first column is padding")
        return self.gpt.hidden_states(tokens)

    @property
    def output_weight(self) -> Tensor:
        """(V, C): the LM head's weight, logits = hidden_states @ output_weight.T."""
        return self.gpt.lm_head.weight

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int, temperature: float = 0.0
    ) -> Tensor:
        """New tokens (B, max_new_tokens) after left-padded prompts; temperature 0 is greedy; pad after the
        first eos. Rows of equal prompt length are generated together (the GPT's cache takes no padding)."""
        was_training = self.training
        self.eval()
        out = input_ids.new_full((input_ids.shape[0], max_new_tokens), self.pad_id)
        lengths = attention_mask.long().sum(1)
        try:
            for n in lengths.unique().tolist():
                rows = (lengths == n).nonzero().squeeze(1)
                new = self.gpt.generate(
                    input_ids[rows, input_ids.shape[1] - n :],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    eos_id=self.eos_id,
                )[:, n:]
                ended = (new == self.eos_id).long().cumsum(1) - (new == self.eos_id).long()
                out[rows, : new.shape[1]] = new.masked_fill(ended > 0, self.pad_id)
        finally:
            self.train(was_training)
        return out


def gpt_policy(cfg: DictConfig, datamodule) -> GPTPolicy:
    """The GPT policy of a run with a divlab GPT student (module docstring); its start provisioned here."""
    from divlab.tasks.seqmatch import start_from_behaviour_cloning
    from divlab.utils.checks import build as build_spec

    if not callable(getattr(datamodule, "start_data", None)):
        raise ConfigError(
            f"a divlab GPT policy (student.model={cfg.student.model.get('_target_')}) needs arithmetic "
            f"preferences, data=preference_arith; data={cfg.data.name} is for Hugging Face policies"
        )
    gpt = build_spec(cfg.student.model, vocab_size=datamodule.vocab_size)
    if getattr(gpt.lm_head, "bias", None) is not None:
        raise ConfigError("task=dpo needs student.model's LM head without a bias (logits = hidden @ W.T)")
    if gpt.context_length < datamodule.max_len:
        raise ConfigError(
            f"student.model.context_length={gpt.context_length} is shorter than the data's sequences "
            f"({datamodule.max_len} tokens); raise it"
        )
    if cfg.dpo.get("init") is not None:
        view = OmegaConf.create(
            {
                "data": datamodule.start_data(),
                "student": OmegaConf.to_container(cfg.student, resolve=True),
                "dpo": OmegaConf.to_container(cfg.dpo, resolve=True),
                "seed": int(cfg.seed),
                "paths": OmegaConf.to_container(cfg.paths, resolve=True),
                "trainer": {
                    "accelerator": cfg.trainer.accelerator,
                    "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
                },
            }
        )
        start_from_behaviour_cloning(view, gpt, section="dpo")
    return GPTPolicy(gpt=gpt, tokenizer=datamodule.tokenizer)
