"""Where divlab's configs are: $DIVLAB_CONF_DIR, else the copy shipped in the package (divlab/conf, a
non-editable install), else the repository's top-level conf/ (an editable install or a source checkout).

A user's own config folder is not put here: it joins through Hydra's search path, e.g.
`divlab hydra.searchpath=[file:///abs/my_conf] experiment=mine` (README, "Your own configs").
"""

import os
from pathlib import Path

import divlab


def conf_dir() -> str:
    """Absolute path of the folder holding train.yaml."""
    if os.environ.get("DIVLAB_CONF_DIR"):
        path = Path(os.environ["DIVLAB_CONF_DIR"]).expanduser().resolve()
        if not (path / "train.yaml").is_file():
            raise SystemExit(
                f"error: DIVLAB_CONF_DIR={path} holds no train.yaml; point it at divlab's conf/ "
                f"folder or unset it"
            )
        return str(path)
    package = Path(divlab.__file__).resolve().parent
    for path in (package / "conf", package.parents[1] / "conf"):
        if (path / "train.yaml").is_file():
            return str(path)
    raise SystemExit(
        f"error: divlab's configs were found neither in the package ({package / 'conf'}) nor in a "
        f"repository checkout ({package.parents[1] / 'conf'}); reinstall divlab (pip install .) "
        f"or set DIVLAB_CONF_DIR to its conf/ folder"
    )
