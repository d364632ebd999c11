"""A judge language model for text evaluation: a separately trained GPT, trained once and cached.

`cfg.judge` (conf/judge/*.yaml) has the shape of a teacher config (model, checkpoint, train) and is
provisioned by the teacher mechanism, `divlab.provision.teacher.provision_teacher`, with no cache of its own:
`checkpoint: auto` trains it once by maximum likelihood (`judge.train.task: lm`) on the run's data
(its train split; the batch size is the recipe's) under a file lock and caches it as
`<paths.teacher_dir>/<hash>.ckpt`, the hash covering the judge architecture, the data and the recipe;
an explicit path must be a divlab checkpoint and is loaded with `weights_only=True`. A judge that is
not cached yet is trained when the run's test starts (`Judge.get`), not when the run is built.

What the judge measures, on prompts (the first tokens of held-out windows) and their continuations:

- `judge_ppl`: exp of the judge's mean per-token NLL of the continuations given their prompts;
- features: the mean of the judge's final hidden states (after the last LayerNorm) over the
  continuation's tokens, one vector per continuation; `mauve_style` (divlab.metrics.text) compares
  the features of generated and of real continuations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from divlab.errors import ConfigError

JUDGE_KEYS = ("model", "checkpoint", "train")


def judge_config(cfg: DictConfig, *, vocab_size: int) -> DictConfig:
    """The config `provision_teacher` reads (divlab.provision.teacher.model_view): teacher = cfg.judge with
    model.vocab_size filled in from the data, the run's data with the judge recipe's batch size."""
    from divlab.provision.teacher import model_view

    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    judge["model"]["vocab_size"] = int(vocab_size)
    return model_view(cfg, judge, batch_size=judge["train"].get("batch_size"))


class Judge:
    """The frozen judge GPT of one run. Built and checked when the task is built: an explicit checkpoint,
    or a cached one, is loaded then; a judge still to be trained (checkpoint: auto, cache empty) is trained
    by the first `get()`, which the LM tasks call when their test starts (`setup("test")`), so parallel
    runs keep training their models meanwhile (the file lock of the teacher cache lets one of them train it)."""

    def __init__(self, view: DictConfig, model: nn.Module, *, checkpoint: str):
        from divlab.provision.teacher import cached_teacher_path

        self.view, self.checkpoint = view, checkpoint
        self.context_length = int(model.context_length)
        self._model, self._ready = model, False
        if checkpoint not in (None, "auto") or cached_teacher_path(view).exists():
            self.get()

    def get(self) -> nn.Module:
        """The judge, loaded (or trained once and cached) on first use; frozen."""
        from divlab.provision.teacher import provision_teacher

        if self._ready:
            return self._model
        try:
            provision_teacher(self.view, self._model, role="judge")
        except RuntimeError as e:  # load_state_dict: tensors of another shape (another vocabulary or width)
            if "state_dict" not in str(e):
                raise
            raise ConfigError(
                f"judge.checkpoint={self.checkpoint} does not fit judge.model (tensors of another "
                f"shape); use the architecture and data it was trained with"
            ) from None
        self._ready = True
        return self._model


def build_judge(cfg: DictConfig, datamodule) -> Judge | None:
    """The judge of cfg.judge, or None without one; a judge that cannot be built raises one sentence."""
    from divlab.utils.checks import build

    spec = cfg.get("judge")
    if spec is None:
        return None
    if getattr(datamodule, "kind", None) != "text":
        raise ConfigError(
            f"a judge scores text continuations, but data={cfg.data.name} is not text windows; "
            f"remove it with ~judge or choose text data (data=shakespeare)"
        )
    missing = [k for k in JUDGE_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"judge.{missing[0]} is not set; see conf/judge/gpt_mid.yaml for a judge config")
    task = (spec.train or {}).get("task")
    if task != "lm":
        raise ConfigError(
            f"judge.train.task={task!r} cannot train a judge language model; set judge.train.task=lm"
        )
    view = judge_config(cfg, vocab_size=datamodule.vocab_size)
    try:
        model = build(view.teacher.model)
    except ConfigError as e:
        raise ConfigError(f"bad judge.model setting: {e}") from None
    except Exception as e:  # a wrong _target_ or argument
        raise ConfigError(
            f"judge.model cannot be built ({type(e).__name__}); fix judge.model (a divlab.models.GPT spec)"
        ) from None
    return Judge(view, model, checkpoint=spec.checkpoint)


@dataclass
class JudgeScores:
    """Per continuation: the judge's NLL (summed over its tokens), its token count, and its feature."""

    nll: np.ndarray  # (N,)
    n_tokens: np.ndarray  # (N,)
    features: np.ndarray  # (N, C) mean final hidden state over the continuation's tokens

    def ppl(self) -> float:
        return math.exp(min(float(self.nll.sum() / max(self.n_tokens.sum(), 1)), 50.0))


@torch.no_grad()
def judge_scores(
    judge: nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 64,
) -> JudgeScores:
    """Score each continuation given its prompt in one causal pass of the judge per batch."""
    device = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    nll, counts, feats = [], [], []
    for i in range(0, len(prompts), batch_size):
        ps, cs = prompts[i : i + batch_size], continuations[i : i + batch_size]
        rows = [list(p) + list(c) for p, c in zip(ps, cs)]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            x[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        x = x.to(device)
        p_len = torch.tensor([len(p) for p in ps], device=device)
        end = torch.tensor([len(r) for r in rows], device=device)
        pos = torch.arange(width, device=device)[None]
        cont = (pos >= p_len[:, None]) & (pos < end[:, None])  # (B, W) the continuation's tokens
        logits, hidden = judge(x, return_hidden=True)
        logp = (
            logits[:, :-1].float().log_softmax(-1).gather(-1, x[:, 1:, None])[..., 0]
        )  # log p(x_{t+1} | x_{<=t})
        nll.append(-(logp * cont[:, 1:]).sum(1))
        n = cont.sum(1)
        counts.append(n)
        feats.append((hidden.float() * cont[..., None]).sum(1) / n.clamp(min=1)[:, None])
    judge.train(was_training)
    return JudgeScores(
        nll=torch.cat(nll).cpu().double().numpy(),
        n_tokens=torch.cat(counts).cpu().numpy(),
        features=torch.cat(feats).cpu().double().numpy(),
    )


def text_report(
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    real: Sequence[Sequence[int]],
    *,
    judge: nn.Module | None,  # the judge GPT (Judge.get()); None: no judge metrics
    pad_id: int,  # fills the tail of shorter rows (never scored)
    mauve_clusters: int = 16,  # k-means clusters of mauve_style
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of generated continuations of `prompts` against the real ones:

    distinct_2, distinct_3, repetition_4 (and their values on the real continuations, *_real); with a
    judge also judge_ppl, judge_ppl_real and mauve (features of the real set as the reference)."""
    from divlab.metrics.text import distinct_n, mauve_style, repetition_rate

    out = {
        "distinct_2": distinct_n(generated, 2),
        "distinct_3": distinct_n(generated, 3),
        "repetition_4": repetition_rate(generated, 4),
        "distinct_2_real": distinct_n(real, 2),
        "repetition_4_real": repetition_rate(real, 4),
    }
    if judge is None:
        return out
    gen, ref = (
        judge_scores(judge, prompts, generated, pad_id=pad_id),
        judge_scores(judge, prompts, real, pad_id=pad_id),
    )
    out["judge_ppl"], out["judge_ppl_real"] = gen.ppl(), ref.ppl()
    keep = gen.n_tokens > 0  # a continuation that backspaced everything has no feature
    if keep.sum() >= 2:
        out["mauve"] = mauve_style(ref.features, gen.features[keep], n_clusters=mauve_clusters, seed=seed)
    return out
