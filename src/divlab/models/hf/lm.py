"""`HFCausalLM`: a Hugging Face causal LM behind the interface divlab's LM tasks use (the same as
divlab.models.GPT where they overlap): logits, final hidden states with the output weight (for the fused
hidden-state losses), generation from left-padded prompts, parameter count. The tokenizer rides along as
a plain attribute, never in the state_dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from divlab.errors import ConfigError

# Text whose ids two tokenizers must agree on before one model is distilled into the other.
PROBE_TEXT = (
    "Distil 12 + 7 = 19 for the Quick brown fox; def f(x): return x ** 2  # naïve café, déjà vu\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>"
)


class HFCausalLM(nn.Module):
    """A `transformers` causal LM (`hf`) with its tokenizer. Batches to `forward`/`hidden_states` are
    right-padded; prompts to `generate` are left-padded."""

    def __init__(
        self,
        *,
        hf: nn.Module,  # a transformers PreTrainedModel with an LM head
        tokenizer,  # its tokenizer (pad token set)
        description: str = "hf",  # a short name of where the model came from, for messages
    ) -> None:
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.description = description
        config = hf.config
        head = hf.get_output_embeddings()
        if head is None or not isinstance(getattr(head, "weight", None), Tensor):
            raise ConfigError(f"{description} has no linear output layer; use a causal LM (…ForCausalLM)")
        if getattr(head, "bias", None) is not None or getattr(config, "final_logit_softcapping", None):
            raise ConfigError(
                f"{description} adds an output bias or logit soft-capping, so its logits are not "
                f"hidden @ W.T as divlab's fused losses need; use another model"
            )
        self.vocab_size = int(head.weight.shape[0])
        self.context_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0
        )
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        if eos is None:
            raise ConfigError(
                f"{description} defines no eos token (tokenizer or config); use a model that does"
            )
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)

    # -- training passes (right-padded batches)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Logits (B, L, V). attention_mask: (B, L) padding mask, or (B, L, L) bool "i may attend to j" (a
        custom layout such as SequenceMatch's `backspace_attention`, passed to the model as an additive 4-D
        mask; needs an sdpa or eager attention); position_ids (B, L): None = 0 .. L-1."""
        if attention_mask is not None and attention_mask.dim() == 3:
            blocked = torch.finfo(self.output_weight.dtype).min
            attention_mask = torch.zeros(
                attention_mask.shape, dtype=self.output_weight.dtype, device=input_ids.device
            ).masked_fill(~attention_mask.bool(), blocked)[:, None]
        return self.hf(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits

    def grow_vocab(self, size: int) -> None:
        """Resize the input embedding and LM head to `size` rows when the tokenizer gained tokens (e.g.
        SequenceMatch's <bs>); the new rows are HF's initialisation. Never shrinks."""
        if size > self.vocab_size:
            self.hf.resize_token_embeddings(size)
            self.vocab_size = int(self.hf.get_output_embeddings().weight.shape[0])

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Final hidden states (B, L, H) after the final norm: forward(...) == hidden_states(...) @ W.T
        with W = output_weight. The logits are never formed."""
        out = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    @property
    def output_weight(self) -> Tensor:
        """(V, H): the LM head's weight (the input embedding when tied)."""
        return self.hf.get_output_embeddings().weight

    def num_parameters(self) -> int:
        """Number of parameters (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- generation (left-padded prompts)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
    ) -> Tensor:
        """New tokens (B, max_new_tokens) after left-padded prompts (B, Lp), through HF's generate with its
        KV cache (positions follow the attention mask). temperature 0 is greedy; a row is pad_id after its
        first eos. Runs in eval mode (no dropout) and restores the mode."""
        from transformers import GenerationConfig

        if temperature < 0:
            raise ConfigError(f"generation temperature must be >= 0, got {temperature}")
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate expects left-padded prompts: the last column of attention_mask is 0")
        sample = temperature > 0
        ids = {"eos_token_id": self.eos_id, "pad_token_id": self.pad_id}
        # every setting explicit (top_k=0: none; HF fills unset ones from the model's and its global defaults,
        # top_k=50 among them), and the model's own generation_config set aside while generating
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=sample,
            temperature=temperature if sample else 1.0,
            top_k=(top_k or 0) if sample else 0,
            top_p=1.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            **ids,
        )
        was_training, saved = self.training, self.hf.generation_config
        self.eval()
        self.hf.generation_config = GenerationConfig(**ids)
        try:
            out = self.hf.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
        finally:
            self.train(was_training)
            self.hf.generation_config = saved
        new = out[:, input_ids.shape[1] :]
        if new.shape[1] < max_new_tokens:  # every row stopped early
            fill = new.new_full((new.shape[0], max_new_tokens - new.shape[1]), self.pad_id)
            new = torch.cat([new, fill], dim=1)
        done = (new == self.eos_id).long().cumsum(dim=1)
        after_eos = (done - (new == self.eos_id).long()) > 0
        return new.masked_fill(after_eos, self.pad_id)


def check_same_tokenizer(
    teacher: HFCausalLM, student: HFCausalLM, *, teacher_key: str = "teacher", student_key: str = "student"
) -> None:
    """Teacher and student must share a vocabulary: the same output size, tokenizer size, special tokens
    and ids of a probe text; else one sentence naming both models."""

    def signature(model: HFCausalLM) -> dict:
        tok = model.tokenizer
        return {
            "output rows": model.vocab_size,
            "tokenizer size": len(tok),
            "eos id": model.eos_id,
            "probe ids": tok(PROBE_TEXT, add_special_tokens=False)["input_ids"],
        }

    def differ(what: str, a, b) -> str:
        if what != "probe ids":
            return f"{what}: {a} vs {b}"
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"the ids of a probe text differ from token {at} on ({len(a)} vs {len(b)} tokens)"

    theirs, ours = signature(teacher), signature(student)
    for what in theirs:
        if theirs[what] != ours[what]:
            raise ConfigError(
                f"{teacher_key} ({teacher.description}) and {student_key} ({student.description}) do not share "
                f"a tokenizer ({differ(what, theirs[what], ours[what])}); give {student_key}.model a model with "
                f"the {teacher_key}'s tokenizer (e.g. source=config with base = the {teacher_key}'s spec)"
            )
