"""A small decoder-only transformer (GPT) in one file.

Used by the language-model tasks: MLE training (`task=lm`), SequenceMatch (`task=seqmatch`,
which needs custom attention masks, position ids and a KV cache that can be popped for the
backspace action) and online data mixing.

Pieces, top to bottom:

- `KVCache`, `backspace_attention`  (divlab.models.gpt_cache, re-exported here) the cache that a
                         backspace pops and the attention mask of sequences containing `<bs>`.
- `CausalSelfAttention`, `FeedForward`, `Block`  a pre-LayerNorm transformer block.
- `GPT`                  the model: `forward`, `hidden_states`, `generate`, `num_parameters`.

Shapes: B batch, T new positions, S key positions (past + new), H heads, D head width,
C model width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.models.gpt_cache import KVCache, backspace_attention

__all__ = ["GPT", "KVCache", "backspace_attention"]

ROTARY_BASE = 10_000.0  # RoFormer (Su et al. 2021), Sec. 3.2.2: theta_i = base^(-2(i-1)/D)


# ----------------------------------------------------------------------------------------------
# Transformer block


def rotary_tables(position_ids: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles m * theta_i, (B, 1, T, D/2), in float32 (RoFormer Sec. 3.2.2)."""
    inv_freq = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) of x (B, H, T, D) by their angles (RoFormer Sec. 3.4.2).

    The paper rotates adjacent pairs (x_{2i}, x_{2i+1}); pairing i with i + D/2 is the same map
    up to a fixed permutation of the head dimensions, and avoids interleaving.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, softmax(Q K^T / sqrt(D)) V (Vaswani et al. 2017, eq. 1)."""

    def __init__(
        self,
        *,
        d_model: int,  # model width C
        n_head: int,  # number of heads H (C = H * D)
        dropout: float,  # dropout on attention weights and on the output projection
        rotary: bool,  # rotate queries and keys by their positions
        layer: int,  # index of this block, for the KV cache
    ) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.dropout, self.rotary, self.layer = dropout, rotary, layer
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,  # (B, T, C)
        *,
        rope: tuple[Tensor, Tensor] | None,
        attn_mask: Tensor | None,  # bool (B or 1, 1, T, S), True = may attend
        is_causal: bool,  # no mask: causal (True) or attend to all keys (False)
        kv_cache: KVCache | None,
    ) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class FeedForward(nn.Module):
    """Position-wise feed-forward network of width 4C (Vaswani et al. 2017, eq. 2), with GELU for ReLU."""

    def __init__(
        self,
        *,
        d_model: int,  # model width C
        dropout: float,  # dropout on the output
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x)) (Xiong et al. 2020, Fig. 1b)."""

    def __init__(
        self,
        *,
        d_model: int,  # model width C
        n_head: int,  # number of heads
        dropout: float,  # residual and attention dropout
        rotary: bool,  # rotary positions inside attention
        layer: int,  # index of this block
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(
            d_model=d_model, n_head=n_head, dropout=dropout, rotary=rotary, layer=layer
        )
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model=d_model, dropout=dropout)

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        x = x + self.attn(self.ln1(x), **attn_kwargs)
        return x + self.mlp(self.ln2(x))


# ----------------------------------------------------------------------------------------------
# Model


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 layout with pre-LayerNorm).

    `forward(idx)` returns next-token logits (B, T, V). A fused large-vocabulary loss can call
    `hidden_states(idx)` (or `forward(..., return_hidden=True)`) and use `lm_head.weight`.
    """

    def __init__(
        self,
        *,
        vocab_size: int,  # number of token ids V
        n_layer: int,  # number of transformer blocks
        n_head: int,  # attention heads per block
        d_model: int,  # model width C, divisible by n_head
        context_length: int,  # longest sequence trained on; KV cache size in generate
        dropout: float = 0.0,  # residual, attention and embedding dropout
        positions: str = "rotary",  # "rotary" (RoFormer) or "learned" absolute embeddings
        tie_weights: bool = True,  # share the token embedding with the LM head
    ) -> None:
        super().__init__()
        if positions not in ("rotary", "learned"):
            raise ConfigError(f"positions must be 'rotary' or 'learned', got {positions!r}.")
        if d_model % n_head != 0:
            raise ConfigError(f"d_model={d_model} must be divisible by n_head={n_head}.")
        if positions == "rotary" and (d_model // n_head) % 2 != 0:
            raise ConfigError(
                f"rotary positions need an even head width; d_model / n_head = {d_model // n_head}."
            )
        if min(vocab_size, n_layer, n_head, d_model, context_length) < 1:
            raise ConfigError("vocab_size, n_layer, n_head, d_model and context_length must all be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
        self.vocab_size, self.n_layer, self.n_head, self.d_model = vocab_size, n_layer, n_head, d_model
        self.context_length, self.positions = context_length, positions

        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_head=n_head, dropout=dropout, rotary=positions == "rotary", layer=i)
            for i in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2 (Radford et al. 2019, Sec. 2.3): scale residual projections by 1/sqrt(N residual layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Number of parameters (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, *, max_length: int | None = None) -> KVCache:
        """An empty cache for this model holding `max_length` (default `context_length`) positions."""
        return KVCache(n_layer=self.n_layer, max_length=max_length or self.context_length)

    def hidden_states(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Final hidden states (B, T, C), after the last LayerNorm and before the LM head.

        Arguments as in `forward`.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}.")
        b, t = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            if self.pos_emb is not None and past + t > self.context_length:
                raise ValueError(
                    f"sequence of {past + t} positions exceeds context_length={self.context_length} "
                    "with learned positions; crop the input or raise model.context_length."
                )
            position_ids = torch.arange(past, past + t, device=idx.device)[None].expand(b, t)
        else:
            position_ids = position_ids.to(idx.device).long().expand(b, t)
            if self.pos_emb is not None and int(position_ids.max()) >= self.context_length:
                raise ValueError(
                    f"position_ids must be < context_length={self.context_length} with learned positions."
                )

        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                raise ValueError(
                    f"attention_mask must be boolean (True = may attend), got {attention_mask.dtype}."
                )
            mask = attention_mask.to(idx.device)
            mask = mask[None, None] if mask.dim() == 2 else mask[:, None] if mask.dim() == 3 else mask
            if mask.dim() != 4 or tuple(mask.shape[-2:]) != (t, past + t):
                raise ValueError(
                    f"attention_mask must have shape (T, S), (B, T, S) or (B, 1, T, S) with T={t}, "
                    f"S={past + t}; got {tuple(attention_mask.shape)}."
                )
        elif past > 0 and t > 1:  # causal over new positions, all past positions visible
            mask = torch.ones(t, past + t, dtype=torch.bool, device=idx.device).tril(diagonal=past)[
                None, None
            ]
        else:
            mask = None
        # Without a mask: causal when there is no past; a single new position attends to all keys.
        is_causal = mask is None and past == 0 and t > 1

        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        rope = rotary_tables(position_ids, self.d_model // self.n_head) if self.pos_emb is None else None
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope=rope, attn_mask=mask, is_causal=is_causal, kv_cache=kv_cache)
        return self.ln_f(x)

    def forward(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Next-token logits (B, T, V) for token ids idx (B, T).

        Args:
            attention_mask: bool (T, S), (B, T, S) or (B, 1, T, S), True where position t may
                attend to key s; S = past + T with a cache. It replaces the default causal mask,
                so it must be causal itself and every row needs at least one True.
                `backspace_attention` builds the SequenceMatch mask.
            position_ids: long (T,) or (B, T); default past, ..., past + T - 1.
            kv_cache: the new positions are appended to it and attend to its past positions.
            return_hidden: also return the final hidden states (B, T, C) before the LM head.
        """
        h = self.hidden_states(
            idx, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache
        )
        logits = self.lm_head(h)
        return (logits, h) if return_hidden else logits

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample up to `max_new_tokens` continuations of idx (B, T0); returns (B, T0 + n).

        temperature 0 is greedy decoding. With `eos_id`, a row that has emitted it keeps
        emitting it, and generation stops early once every row has. Uses a KV cache; when the
        sequence outgrows `context_length`, the cache is rebuilt from the last half context.
        Call `model.eval()` first if the model has dropout.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}.")
        cache = self.new_kv_cache()
        out = idx
        logits = self(idx[:, -self.context_length :], kv_cache=cache)[:, -1]
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            next_id = self._sample(logits, temperature=temperature, top_k=top_k, generator=generator)
            if eos_id is not None:
                next_id = next_id.masked_fill(done, eos_id)
                done |= next_id == eos_id
            out = torch.cat([out, next_id[:, None]], dim=1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                break
            if cache.length >= cache.max_length:  # slide the window: re-encode the last half context
                cache.reset()
                logits = self(out[:, -max(1, self.context_length // 2) :], kv_cache=cache)[:, -1]
            else:
                logits = self(next_id[:, None], kv_cache=cache)[:, -1]
        return out

    @staticmethod
    def _sample(
        logits: Tensor, *, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """One token id per row from logits (B, V)."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
