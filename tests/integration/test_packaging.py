"""Configs ship with the package: a wheel installed outside the checkout runs from any directory, and a
user's own config folder joins through Hydra's search path."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def user_experiment(folder: Path) -> Path:
    """A config folder of the user's own with one experiment file: experiment=mine."""
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /task: classify
          - override /student: digits_mlp
        experiment_name: mine
        trainer:
          max_epochs: 1
        """)
    )
    return folder


def test_conf_dir_env_must_hold_train_yaml(tmp_path, monkeypatch):
    from divlab.cli.conf_dir import conf_dir

    monkeypatch.setenv("DIVLAB_CONF_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="DIVLAB_CONF_DIR=.* holds no train.yaml"):
        conf_dir()
    monkeypatch.setenv("DIVLAB_CONF_DIR", str(ROOT / "conf"))
    assert conf_dir() == str(ROOT / "conf")


def test_user_config_folder_through_hydra_searchpath(run_cli, tmp_path, outputs):
    mine = user_experiment(tmp_path / "my_conf")
    result = run_cli(f"hydra.searchpath=[file://{mine}]", "experiment=mine", "debug=fast")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    assert run_dir.parent.parent == outputs / "classify" / "mine" and (run_dir / "metrics.json").is_file()
    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())  # the config, logged
    assert hparams["choices"]["experiment"] == "mine" and hparams["experiment_name"] == "mine"
    assert "teacher" not in hparams["choices"]  # a group the task does not use is no tag


def test_wheel_installed_outside_the_checkout_runs_from_any_directory(tmp_path, teacher_dir):
    """pip wheel (from a copy of the sources, so the checkout gets no build/), pip install --target, then
    `python -m divlab experiment=kd/digits debug=fast` with only that folder on the path, from elsewhere."""
    src = tmp_path / "src_copy"
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("divlab-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (site / "divlab" / "conf" / "train.yaml").is_file()
    assert (site / "divlab" / "conf" / "experiment" / "kd" / "cifar100" / "_common.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DIVLAB_CONF_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    # -P: nothing from the working directory; PYTHONPATH comes before this venv's editable path to the checkout
    check = subprocess.run(
        [sys.executable, "-P", "-c", "import divlab.cli.conf_dir as c; print(c.conf_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == str(site / "divlab" / "conf"), check.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "divlab",
            "experiment=kd/digits",
            "debug=fast",
            f"paths.teacher_dir={teacher_dir}",
            "trainer.enable_progress_bar=false",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    assert (elsewhere / run_dir / "metrics.json").is_file() and (elsewhere / "outputs") in (
        elsewhere / run_dir
    ).parents
