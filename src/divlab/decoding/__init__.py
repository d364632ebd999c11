"""divlab.decoding: decoding rules applied to any divlab causal LM at generation time (no training).

uscd.py   USCD (Wang et al. 2024): greedy, contrastive decoding with a lame prompt, and the uncertainty-
          gated choice between them, as pure functions on next-token logits (equations cited there;
          its docstring lists the decode: config keys)
loop.py   `generate(model, standard_ids, lame_ids=..., decode=greedy|contrastive|uscd, ...)` over a
          divlab GPT or an HFCausalLM, both prompts side by side with KV caches; returns the new ids and
          the fraction of steps where the contrast was applied
"""

from divlab.decoding.loop import Decoded, generate
from divlab.decoding.uscd import MODES, contrastive, contrastive_logits, greedy, uncertainty, uscd_step

__all__ = [
    "MODES",
    "Decoded",
    "contrastive",
    "contrastive_logits",
    "generate",
    "greedy",
    "uncertainty",
    "uscd_step",
]
