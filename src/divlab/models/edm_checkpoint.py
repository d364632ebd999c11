"""EDM checkpoints as safetensors: divlab never unpickles NVlabs' `.pkl` files (a pickle runs code on load).

A user with NVlabs/edm's code converts a `.pkl` once with scripts/convert_edm_checkpoint.py, which
unpickles it in that environment, keeps the raw network's weights (`ema.model`, EDMPrecond removed)
and writes them with `save_edm_network` under divlab's names (those of divlab.models.edm_networks,
whose module tree follows the reference: `enc.32x32_conv.weight`, `dec.16x16_block3.qkv.weight`, ...),
with the architecture and sigma_data in the file's metadata. `load_edm_weights` checks every name and
shape against the network built from the config and fails in one sentence on the first mismatch;
`pretrained_edm_network` is the `teacher.model` target of conf/teacher/edm_cifar10*.yaml and
conf/teacher/edm_imagenet64*.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from divlab.errors import ConfigError

__all__ = [
    "save_edm_network",
    "load_edm_weights",
    "pretrained_edm_network",
    "read_metadata",
    "convert_reference_state",
    "reference_kwargs",
    "ARCHITECTURES",
]

ARCHITECTURES = {
    "SongUNet": "divlab.models.edm_networks.SongUNet",
    "DhariwalUNet": "divlab.models.edm_networks.DhariwalUNet",
}
META_KEY = "divlab_edm"  # safetensors metadata entry: JSON {architecture, kwargs, sigma_data, source}
# reference constructor options divlab's networks take as they are (the rest must keep the value supported here)
PASSED = (
    "img_resolution",
    "label_dim",
    "augment_dim",
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
)
SUPPORTED = {
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
}


def _check_path(path: Path, *, key: str) -> Path:
    path = Path(path)
    if path.suffix == ".pkl":
        raise ConfigError(
            f"{key}={path} is an NVlabs pickle, which divlab never unpickles (it runs code on load); "
            f"convert it once with scripts/convert_edm_checkpoint.py and set {key} to the .safetensors "
            f"file it writes"
        )
    if not path.is_file():
        raise ConfigError(
            f"{key}={path} does not exist; convert an EDM checkpoint with "
            f"scripts/convert_edm_checkpoint.py and set {key} to the .safetensors file"
        )
    return path


def save_edm_network(
    net: nn.Module,
    path: str | Path,
    *,
    sigma_data: float = 0.5,
    source: str = "",
    kwargs: dict | None = None,
    state: dict | None = None,
) -> Path:
    """Write `net`'s weights (or `state`, names of `net`) as safetensors with the architecture metadata."""
    from safetensors.torch import save_file

    name = type(net).__name__
    if name not in ARCHITECTURES:
        raise ConfigError(f"save_edm_network takes a {' or '.join(ARCHITECTURES)}, got {name}")
    state = net.state_dict() if state is None else state
    meta = {"architecture": name, "kwargs": kwargs or {}, "sigma_data": float(sigma_data), "source": source}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
        str(path),
        metadata={META_KEY: json.dumps(meta)},
    )
    return path


def read_metadata(path: str | Path, *, key: str = "path") -> dict:
    """The JSON metadata `save_edm_network` wrote ({} for a safetensors file without it)."""
    from safetensors import safe_open

    path = _check_path(Path(path), key=key)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on a file that is not safetensors
        raise ConfigError(
            f"{key}={path} cannot be read as safetensors ({type(e).__name__}); point {key} at a "
            f"file written by scripts/convert_edm_checkpoint.py"
        ) from None
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


def load_edm_weights(net: nn.Module, path: str | Path, *, key: str = "teacher.model.path") -> nn.Module:
    """Copy the safetensors weights at `path` into `net`, after checking every name and shape."""
    from safetensors.torch import load_file

    path = _check_path(Path(path), key=key)
    meta = read_metadata(path, key=key)
    arch = meta.get("architecture")
    if arch is not None and arch != type(net).__name__:
        raise ConfigError(
            f"{key}={path} holds a {arch} but the config builds a {type(net).__name__}; "
            f"choose the teacher config of that architecture"
        )
    state = load_file(str(path))
    expected = net.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ConfigError(
                f"{key}={path} has no tensor {name!r} that the configured {type(net).__name__} needs; "
                f"set the network options to those the file was written with ({meta.get('kwargs')})"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{key}={path}: {name!r} has shape {tuple(state[name].shape)} where the configured "
                f"{type(net).__name__} has {tuple(tensor.shape)}; set the network options to those the "
                f"file was written with ({meta.get('kwargs')})"
            )
    for name in state:
        if name not in expected:
            raise ConfigError(
                f"{key}={path} has a tensor {name!r} the configured {type(net).__name__} lacks; set the "
                f"network options to those the file was written with ({meta.get('kwargs')})"
            )
    net.load_state_dict(state, strict=True)
    return net


def pretrained_edm_network(*, network: nn.Module, path: str) -> nn.Module:
    """`teacher.model` target: `network` (built by Hydra from teacher.model.network) with the weights at `path`."""
    return load_edm_weights(network, path)


# ----------------------------------------------------------------------------- conversion (the script's core)


def reference_kwargs(model_type: str, init_kwargs: dict) -> dict:
    """divlab constructor options from a reference EDMPrecond's init_kwargs; unsupported options fail."""
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"model_type={model_type} is not supported; divlab has {', '.join(ARCHITECTURES)}")
    for option, value in SUPPORTED.items():
        if option in init_kwargs and _plain(init_kwargs[option]) != value:
            raise ConfigError(
                f"{option}={init_kwargs[option]!r} is not supported by divlab's {model_type} "
                f"(only {value!r}: the DDPM++ and ADM configurations of EDM)"
            )
    kwargs = {k: _plain(init_kwargs[k]) for k in PASSED if k in init_kwargs}
    kwargs["in_channels"] = int(init_kwargs.get("img_channels", init_kwargs.get("in_channels", 3)))
    return kwargs


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def convert_reference_state(state: dict) -> dict:
    """A reference EDMPrecond's (or its `.model`'s) state_dict under divlab's names: the `model.` prefix and
    the fixed resampling-filter buffers dropped (divlab resamples with the [1, 1] filter directly)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("model."):
            name = name[len("model.") :]
        if name.endswith("resample_filter"):
            continue
        if name.endswith("map_noise.freqs"):
            raise ConfigError(
                "the checkpoint uses Fourier noise features (NCSN++); divlab has DDPM++ and ADM only"
            )
        out[name] = tensor
    return out
