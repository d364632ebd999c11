"""Where divlab's conf/ folder is: $DIVLAB_CONF_DIR, else the repository's conf/."""

import os
from pathlib import Path


def conf_dir() -> str:
    path = Path(os.environ.get("DIVLAB_CONF_DIR") or Path(__file__).resolve().parents[3] / "conf")
    if not (path / "train.yaml").is_file():
        raise SystemExit(f"error: divlab's config folder was not found at {path}; install divlab from its "
                         f"repository (pip install -e .) or set DIVLAB_CONF_DIR to the conf/ folder")
    return str(path)
