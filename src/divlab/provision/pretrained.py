"""A compact Hugging Face student pre-trained by language modelling on unlabeled text, trained once, cached.

Turc et al. 2019, "Well-Read Students Learn Better: On the Importance of Pre-training Compact Models",
Sec. 3 (Pre-trained Distillation): step 1 pre-trains the compact model on unlabeled LM data, step 2 distils
it from the teacher on the transfer data, step 3 (optional) fine-tunes it on labels. This module is step 1
for a causal student: the paper's masked-LM objective becomes next-token NLL (divlab.objectives.lm),

    L_LM = - (1/N) sum_t log q(x_{t+1} | x_{<=t})   over windows of unlabeled text,

and steps 2-3 are any run that builds its student from this spec (`task=lm_distill`, as the rows of
conf/table/pretrained_distill.yaml do).

`build_pretrained_hf_lm` is the `_target_` of conf/student/smollm2_l3_pretrained.yaml: the keys of
`divlab.models.hf.build_hf_lm` (so the data's tokenizer reads the spec as any HF student's) plus `pretrain`:

    pretrain:
      data: {datamodule: {...}}   # token windows of the text (divlab.data.text_lm); its tokenizer is filled
                                  # in: the student's own, nothing added (HFTokenizer, backspace=false)
      seed, max_epochs, limit_train_batches, optimizer   # the recipe (task lm, as conf/judge/gpt_mid.yaml's)
      builder: divlab.tasks.lm.build_teacher_task        # trains it: (cfg, recipe) -> (network, task, meta)
      checkpoint: auto            # auto: train once and cache; or the path of a divlab checkpoint
      cache_dir, accelerator      # where it is cached (${paths.teacher_dir}), what trains it

The model built from the other keys (its `init`: random, teacher_layers, ...) is the start of the
pre-training. `checkpoint: auto` caches the result through the teacher mechanism
(`divlab.provision.teacher.provision_teacher`): `<cache_dir>/<hash>.ckpt` under a file lock, the hash
covering the model spec, `pretrain.data` and the recipe, so parallel table cells pre-train it once and
every run and seed of every row starts from the same weights (the paper pre-trains each model once).
The run's random state is restored after a pre-training, so the run that trained the cache and the runs
that read it train alike.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from divlab.errors import ConfigError
from divlab.models.hf import build_hf_lm

RECIPE_KEYS = ("seed", "max_epochs", "limit_train_batches", "optimizer", "builder")
PRETRAIN_KEYS = ("data", *RECIPE_KEYS, "checkpoint", "cache_dir", "accelerator")
REQUIRED = ("data", "seed", "max_epochs", "optimizer", "builder", "cache_dir")
TEXT_TOKENIZER = "divlab.data.hf_tokenizer.HFTokenizer"


def build_pretrained_hf_lm(*, pretrain: dict, **spec):
    """The HFCausalLM of `spec` (build_hf_lm's keys) with the weights of its LM pre-training (module
    docstring): read from the cache or the checkpoint, else trained once now. Trainable, in train mode."""
    from divlab.provision.teacher import provision_teacher

    key = str(spec.get("key", "model"))
    view = pretrain_view(spec, pretrain, key=key)
    model = build_hf_lm(**spec)
    with kept_random_state():
        provision_teacher(view, model, role="pre-trained student", key=f"{key}.pretrain.checkpoint")
    return model.train().requires_grad_(True)


def pretrain_view(spec: dict, pretrain, *, key: str) -> DictConfig:
    """The config `provision_teacher` reads: teacher = (the model spec, checkpoint, recipe), the text data
    with the student's tokenizer, the cache folder and accelerator. Bad `pretrain` settings fail naming
    the key."""
    p = OmegaConf.to_container(pretrain, resolve=True) if isinstance(pretrain, DictConfig) else pretrain
    if not isinstance(p, dict):
        raise ConfigError(f"{key}.pretrain must be a mapping of {', '.join(PRETRAIN_KEYS)}, got {p!r}")
    unknown = sorted(set(p) - set(PRETRAIN_KEYS))
    if unknown:
        raise ConfigError(
            f"{key}.pretrain.{unknown[0]} is not a pre-training setting; use {', '.join(PRETRAIN_KEYS)}"
        )
    missing = [k for k in REQUIRED if p.get(k) is None]
    if missing:
        raise ConfigError(
            f"{key}.pretrain.{missing[0]} is not set; see conf/student/smollm2_l3_pretrained.yaml"
        )
    for name in ("max_epochs", "limit_train_batches"):
        value = p.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}.pretrain.{name} must be an integer >= 1, got {value!r}")
    if p.get("checkpoint") == "pretrained":
        raise ConfigError(
            f"{key}.pretrain.checkpoint=pretrained would skip the pre-training; use auto (train once and "
            f"cache) or the path of a divlab checkpoint"
        )
    data = p["data"]
    if not isinstance(data, dict) or not isinstance(data.get("datamodule"), dict):
        raise ConfigError(
            f"{key}.pretrain.data must hold a datamodule spec "
            f"(e.g. _target_: divlab.data.text_lm.TextWindowsDataModule)"
        )
    if data["datamodule"].get("tokenizer") is not None:
        raise ConfigError(
            f"{key}.pretrain.data.datamodule.tokenizer must be unset: the pre-training reads the text with "
            f"the student's own tokenizer ({key} without added tokens)"
        )
    model = {k: v for k, v in spec.items() if k != "pretrain" and not k.startswith("_")}
    model["_target_"] = "divlab.models.hf.build_hf_lm"
    datamodule = {
        **data["datamodule"],
        "tokenizer": {
            "_target_": TEXT_TOKENIZER,
            "backspace": False,  # the student's vocabulary unchanged: its rows are the distilled student's
            "tokenizer": {
                "_target_": "divlab.models.hf.load_tokenizer",
                "_recursive_": False,
                "model": model,
                "cache_dir": model.get("cache_dir"),
            },
        },
    }
    recipe = {"task": "lm", **{k: p.get(k) for k in RECIPE_KEYS}}
    return OmegaConf.create(
        {
            "teacher": {"model": model, "checkpoint": p.get("checkpoint") or "auto", "train": recipe},
            "data": {**data, "datamodule": datamodule},
            "paths": {"teacher_dir": p["cache_dir"]},
            "trainer": {"accelerator": p.get("accelerator") or "auto", "enable_progress_bar": False},
        }
    )


@contextmanager
def kept_random_state():
    """Python, numpy and torch random states (and Lightning's PL_GLOBAL_SEED) as before the block."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    seed = os.environ.get("PL_GLOBAL_SEED")
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed
