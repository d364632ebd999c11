"""Name -> divergence class registry behind `get_divergence` and `available`."""

from __future__ import annotations

import inspect

from divlab.errors import ConfigError

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make `cls` constructible as `get_divergence(name, **params)`."""

    def wrap(cls):
        if name in _REGISTRY:
            raise RuntimeError(f"divergence {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Sorted names of every registered divergence."""
    return sorted(_REGISTRY)


def get_divergence(name: str, **params):
    """Build the divergence registered as `name` with keyword parameters `params`.

    An unknown name or parameter, or a parameter outside its range, raises `ConfigError`
    (a `ValueError`) with a one-sentence message that names the key to change.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown divergence {name!r}; choose one of: {', '.join(available())}.")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Divergence {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no parameters'}."
        )
    return cls(**params)
