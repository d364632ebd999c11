"""SequenceMatch (`task=seqmatch`; Cundy & Ermon, ICLR 2024): imitation learning for a GPT with a
backspace action. The loss is in `divlab.objectives.seqmatch` ((SM1)-(SM5) there); this module runs it:

1. every training batch gets noise-and-backspace synthesis (p_noise; p_noise = 0 trains no `<bs>`);
2. one forward pass over the noised rows with `backspace_attention` (mask of alive tokens, position
   ids = the state's length) gives the logits of every state;
3. for the first `bc_epochs` epochs the loss is the NLL of the data actions (behaviour cloning);
   afterwards it is (1 - lambda) NLL + lambda L_SM (SM5);
4. every `rollout_every` steps (after behaviour cloning) the current model samples continuations of
   training prompts with the backspace-aware sampler (`seqmatch_sampler`); the latest rollouts are
   the "policy" transitions of the mixture expectation in (SM3), re-scored with the current model.
   train/bs_rate is the fraction of rollout actions that were `<bs>`.

Evaluation is `task=lm`'s (val/test loss and perplexity on clean data; on arithmetic, greedy exact
match on clean prompts and OOD prefixes and the backspace rate; on text, distinct-n, repetition, the
backspace rate and, with a judge, judge perplexity and the MAUVE-style score of sampled continuations).

On text windows (data=shakespeare; the data's prompt is one token and no row ends in `<eos>`) the
noise tokens are drawn from the bytes that occur in the train split, and a rollout continues the
first `lm.text_prompt_tokens` tokens of a training window (the prompt of the text test) by
`rollout_max_steps` actions, `<eos>` never sampled.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from divlab.data.loaders import eval_loader
from divlab.errors import ConfigError
from divlab.models.gpt import backspace_attention
from divlab.models.gpt_cache import backspace_state_index
from divlab.objectives.seqmatch import (
    BS_STATES,
    MixtureRegulariser,
    add_noise_and_backspace,
    sequencematch_loss,
    soft_q_transitions,
)
from divlab.tasks.classify import optimization
from divlab.tasks.lm import LMTask, action_mask, build_student, eval_settings, text_eval_settings
from divlab.tasks.seqmatch_sampler import sample_with_backspace


def build(cfg: DictConfig, *, datamodule=None) -> SeqMatchTask:
    """task.builder of task=seqmatch: student GPT, regulariser from cfg.divergence, settings from cfg.seqmatch."""
    from divlab.utils.checks import build as build_spec

    model = build_student(cfg, datamodule)
    hf = getattr(datamodule.tokenizer, "kind", None) == "hf"
    if cfg.seqmatch.get("init") is not None:
        if hf:
            raise ConfigError(
                "seqmatch.init starts a divlab GPT; with a Hugging Face student set seqmatch.init=null "
                "(the pretrained weights are the start) and seqmatch.bc_epochs for behaviour cloning"
            )
        start_from_behaviour_cloning(cfg, model)
    try:
        divergence = build_spec(cfg.divergence)
    except ConfigError as e:
        raise ConfigError(f"bad divergence.* setting: {e}") from None
    s = cfg.seqmatch
    regulariser = MixtureRegulariser(divergence=divergence, alpha=s.alpha)
    tok = datamodule.tokenizer
    text = text_eval_settings(cfg, datamodule)
    # text and HF tokenizers: the tokens of the train split; else every content token of the alphabet
    noise_ids = datamodule.content_ids() if text or hf else list(range(tok.n_content))
    return SeqMatchTask(
        model=model,
        tokenizer=tok,
        regulariser=regulariser,
        p_noise=s.p_noise,
        lam=s["lambda"],
        gamma=s.gamma,
        bc_epochs=s.bc_epochs,
        policy_weight=s.policy_weight,
        rollout_every=s.rollout_every,
        rollout_batch=s.rollout_batch,
        rollout_max_steps=s.rollout_max_steps,
        rollout_temperature=s.rollout_temperature,
        noise_ids=noise_ids,
        bs_state=s.bs_state,
        run_dir=cfg.get("run_dir"),
        **eval_settings(cfg),
        **text,
        **optimization(cfg),
    )


def start_from_behaviour_cloning(cfg: DictConfig, model: nn.Module, *, section: str = "seqmatch") -> None:
    """<section>.init: the student starts from a behaviour-cloning (MLE) model of the same architecture,
    trained once by `<section>.init_train` (task lm, on the run's clean data) and cached like a teacher
    (`auto`), or read from a divlab checkpoint (a path, loaded weights_only). `section`: seqmatch, or rlvr
    (the RL start policy, divlab.tasks.rlvr)."""
    from divlab.provision.teacher import model_view, provision_teacher

    s = cfg[section]
    if s.get("init_train") is None and s.init == "auto":
        raise ConfigError(f"{section}.init=auto needs {section}.init_train (the behaviour-cloning recipe)")
    recipe = {
        "task": "lm",
        "builder": "divlab.tasks.lm.build_teacher_task",
        **OmegaConf.to_container(s.get("init_train") or {}, resolve=True),
    }
    if (
        recipe.get("seed") is None
    ):  # one behaviour-cloning model per run seed (the run's hash stays seed-free)
        recipe["seed"] = int(cfg.seed)
    spec = {
        "model": {**OmegaConf.to_container(cfg.student.model, resolve=True), "vocab_size": model.vocab_size},
        "checkpoint": s.init,
        "train": recipe,
    }
    provision_teacher(model_view(cfg, spec), model, role="behaviour-cloning start", key=f"{section}.init")
    model.train().requires_grad_(True)


class SeqMatchTask(LMTask):
    def __init__(
        self,
        *,
        regulariser: MixtureRegulariser,  # psi of (SM3), from the divergence library
        p_noise: float = 0.1,  # rate of inserted (noise, <bs>) pairs; 0: no <bs> data
        lam: float = 0.5,  # lambda of (SM5) after behaviour cloning
        gamma: float = 0.99,  # discount of (SM2)
        bc_epochs: int = 1,  # epochs of pure MLE (behaviour cloning) first
        policy_weight: float = 0.5,  # w of the data/policy mixture in (SM3)
        rollout_every: int = 10,  # training steps between policy rollouts
        rollout_batch: int = 64,  # prompts per rollout
        rollout_max_steps: int = 16,  # cap on actions per rollout row (<bs> included)
        rollout_temperature: float = 1.0,  # sampling temperature of the rollouts
        noise_ids: list[int],  # token ids noise tokens are drawn from
        bs_state: str = "conditioned",  # state after <bs>: prefix + <bs> | popped to the prefix (paper)
        **lm_kwargs,
    ):  # model, tokenizer, optimizer, ... (see LMTask)
        super().__init__(task_name="seqmatch", **lm_kwargs)
        checks = {
            "seqmatch.p_noise": 0 <= p_noise < 1,
            "seqmatch.lambda": 0 <= lam <= 1,
            "seqmatch.gamma": 0 < gamma <= 1,
            "seqmatch.bc_epochs": bc_epochs >= 0,
            "seqmatch.policy_weight": 0 <= policy_weight <= 1,
            "seqmatch.rollout_every": rollout_every >= 1,
            "seqmatch.rollout_batch": rollout_batch >= 1,
            "seqmatch.rollout_max_steps": rollout_max_steps >= 1,
            "seqmatch.rollout_temperature": rollout_temperature > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"{bad[0]} is out of range; see conf/task/seqmatch.yaml for the allowed values")
        if bs_state not in BS_STATES:
            raise ConfigError(
                f"seqmatch.bs_state={bs_state!r} is not known; choose one of {', '.join(BS_STATES)}"
            )
        if len(noise_ids) < 2:
            raise ConfigError("seqmatch noise needs at least two content tokens in the tokenizer")
        self.regulariser, self.p_noise, self.lam, self.gamma = regulariser, p_noise, lam, gamma
        self.bs_state = bs_state
        self.bc_epochs, self.policy_weight = bc_epochs, policy_weight
        self.rollout_every, self.rollout_batch = rollout_every, rollout_batch
        self.rollout_max_steps, self.rollout_temperature = rollout_max_steps, rollout_temperature
        self.register_buffer("noise_ids", torch.tensor(noise_ids, dtype=torch.long), persistent=False)
        self._policy = None  # latest rollout: (tokens, prompt_len, length)
        self._prompt_iter = None

    # ------------------------------------------------------------------ pieces
    def transitions(self, tokens, prompt_len, length, *, is_noise=None):
        """Logits of every state in one masked pass, then (SM1)-(SM2) over the counted actions."""
        mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
        if is_noise is not None:
            mask = mask & ~is_noise[:, 1:]  # the noise token is never a target
        attn, pos = backspace_attention(tokens, bs_id=self.tokenizer.bs_id, prompt_len=prompt_len)
        logits = self.model(tokens, attention_mask=attn, position_ids=pos)
        index = (
            backspace_state_index(tokens, bs_id=self.tokenizer.bs_id, prompt_len=prompt_len)
            if self.bs_state == "popped"
            else None
        )
        return soft_q_transitions(
            logits, tokens, mask, eos_id=self.tokenizer.eos_id, gamma=self.gamma, state_index=index
        )

    def generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.global_step * 7_919 + self.global_rank)
        return g

    def in_bc_phase(self) -> bool:
        return self.current_epoch < self.bc_epochs or self.lam == 0

    def next_prompts(self) -> dict:
        """The next `rollout_batch` training rows (their prompts are continued by the policy)."""
        if self._prompt_iter is None:
            dataset = self.trainer.datamodule.dataset("train")
            g = self.generator()
            order = torch.randperm(len(dataset), generator=g)
            loader = eval_loader(
                torch.utils.data.Subset(dataset, order.tolist()), batch_size=self.rollout_batch
            )
            self._prompt_iter = iter(loader)
        try:
            return next(self._prompt_iter)
        except StopIteration:
            self._prompt_iter = None
            return self.next_prompts()

    @torch.no_grad()
    def rollout(self) -> None:
        batch = {k: v.to(self.device) for k, v in self.next_prompts().items()}
        prompt_len = batch["prompt_len"]
        tok = self.tokenizer
        never = (tok.pad_id, tok.bos_id)
        if self.text_data:  # text windows: continue the text test's prompt; a window never ends
            prompt_len = torch.full_like(prompt_len, self.text_prompt_tokens)
            never = (*never, tok.eos_id)
        was_training = self.model.training
        self.model.eval()
        ro = sample_with_backspace(
            self.model,
            batch["tokens"][:, : int(prompt_len.max())],
            input_len=prompt_len,
            prompt_len=prompt_len,
            max_steps=self.rollout_max_steps,
            bs_id=tok.bs_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            never=never,
            temperature=self.rollout_temperature,
            generator=self.generator(),
            bs_state=self.bs_state,
        )
        self.model.train(was_training)
        width = int(ro.length.max())
        self._policy = (ro.tokens[:, :width], ro.prompt_len, ro.length)
        n = ro.n_actions.sum()
        self.track("bs_rate", ro.n_backspace.sum() / n.clamp(min=1), n)
        self.track("rollout_eos", ro.ended.float().mean(), len(ro.ended))

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        tok = self.tokenizer
        tokens, length = batch["tokens"], batch["length"]
        is_noise = None
        if self.p_noise > 0:
            tokens, length, is_noise = add_noise_and_backspace(
                tokens,
                prompt_len=batch["prompt_len"],
                length=length,
                p_noise=self.p_noise,
                noise_ids=self.noise_ids,
                bs_id=tok.bs_id,
                pad_id=tok.pad_id,
                generator=self.generator(),
            )
        data = self.transitions(tokens, batch["prompt_len"], length, is_noise=is_noise)
        n = data.mask.sum()
        nll = torch.where(data.mask, data.nll, torch.zeros_like(data.nll)).sum() / n.clamp(min=1)
        self.track("nll", nll, n)
        if self.in_bc_phase():
            self.track("loss", nll, n)
            return nll
        if self.global_step % self.rollout_every == 0 or self._policy is None:
            self.rollout()
        policy = self.transitions(*self._policy)
        sm, terms = sequencematch_loss(
            data, policy, regulariser=self.regulariser, gamma=self.gamma, policy_weight=self.policy_weight
        )
        loss = (1 - self.lam) * nll + self.lam * sm
        for name, value in (("sm", sm), ("loss", loss), *terms.items()):
            self.track(name, value, n)
        return loss
