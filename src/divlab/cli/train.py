"""`divlab` / `python -m divlab`: the Hydra entry point that trains one config (or a sweep with -m)."""

import sys

import hydra
from omegaconf import DictConfig

from divlab.cli.conf_dir import conf_dir
from divlab.errors import ConfigError


@hydra.main(config_path=conf_dir(), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from divlab.runner import run

    try:
        record = run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    if cfg.get("optimized_metric"):
        return record["metrics"][cfg.optimized_metric]
    return None


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
