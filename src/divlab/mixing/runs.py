"""Other runs a mixer learns from (DoReMi's reference and proxy, grid and data-mixing-law sweeps,
Skill-It's one-group runs), done in-process by `divlab.runner.run`.

A run here is the current config with only its `mixer` node (and optionally trainer.max_steps)
replaced, so it lands in the ordinary run directory of that config: a stratified reference run is
the very run of `mixer=stratified`, a grid point is the run of `mixer=static mixer.weights=[...]`,
and each is trained once and reused by every method (and every table cell) that needs it. A file
lock per run directory stops two processes (reproduce.py jobs=2) from training the same run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from divlab.errors import ConfigError
from divlab.utils.io import read_json


def mixer_node(name: str, **overrides) -> DictConfig:
    """conf/mixer/<name>.yaml with `overrides`, exactly as `mixer=<name> mixer.key=value` composes it."""
    from divlab.cli.conf_dir import conf_dir

    path = Path(conf_dir()) / "mixer" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"there is no conf/mixer/{name}.yaml.")
    node = OmegaConf.load(path)
    for key, value in overrides.items():
        node[key] = value
    return node


def sub_config(cfg: DictConfig, mixer: DictConfig, *, max_steps: int | None = None) -> DictConfig:
    sub = cfg.copy()
    with open_dict(sub):
        sub.mixer = mixer
        sub.run_dir = None
        sub.rerun = False
        sub.print_config = False
        if max_steps is not None:
            sub.trainer.max_steps = int(max_steps)
            interval = sub.trainer.get("val_check_interval")
            if isinstance(interval, int) and int(max_steps) % interval:  # validate at the last step too
                sub.trainer.val_check_interval = int(max_steps)
    return sub


def run_with(cfg: DictConfig, mixer: DictConfig, *, max_steps: int | None = None, why: str = "") -> Path:
    """Train (or reuse) the run of `cfg` with this mixer; returns its run directory."""
    from filelock import FileLock

    from divlab.runner import run, run_directory, say
    from divlab.utils.hashing import prune_unused

    sub = sub_config(cfg, mixer, max_steps=max_steps)
    prune_unused(sub)
    run_dir = run_directory(sub)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir.parent / f"{run_dir.name}.lock")):
        if not (run_dir / "metrics.json").exists():
            say(f"[{why}] training {OmegaConf.to_container(mixer)} ({sub.trainer.max_steps} steps)")
        record = run(sub)
    if not (run_dir / "metrics.json").exists():
        raise ConfigError(f"the {why} run in {run_dir} did not finish; delete that folder and try again.")
    return Path(record["run_dir"])


def final_val_losses(run_dir: Path, groups: list[str]) -> list[float]:
    """Per-group validation loss of a finished run at its last step."""
    history = read_json(Path(run_dir) / "group_losses.json")["history"]
    return list(history[-1]["val_loss"])


def first_val_losses(run_dir: Path) -> list[float]:
    return list(read_json(Path(run_dir) / "group_losses.json")["history"][0]["val_loss"])
