"""Shared fixtures: Hydra compose (GlobalHydra cleared around each use) and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import settings

# No example database: tests write nothing into the checkout.
settings.register_profile("divlab", database=None)
settings.load_profile("divlab")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """One teacher cache for the session: each teacher recipe is trained once per test run."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def base_overrides(outputs, teacher_dir) -> list[str]:
    return [f"paths.output_root={outputs}", f"paths.teacher_dir={teacher_dir}", "print_config=false",
            "trainer.enable_progress_bar=false"]


@pytest.fixture
def compose_cfg(base_overrides):
    """compose_cfg(*overrides, fast=True, hydra=False) -> DictConfig, like the CLI would build it."""

    def _compose(*overrides: str, fast: bool = True, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            extra = ["debug=fast"] if fast else []
            return compose("train", overrides=[*base_overrides, *extra, *overrides],
                           return_hydra_config=hydra)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def run_cli(tmp_path, base_overrides):
    """run_cli(*args) runs `python -m divlab ...` in tmp_path with the test's output paths."""

    def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        return subprocess.run([sys.executable, "-m", "divlab", *args, *base_overrides], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture
def data_writer():
    """data_writer(name) -> a file writer of tests/unit/test_data_modules.py (write_cifar, write_fashion, ...);
    tests/ is not a package, so the module is loaded from its path."""
    import importlib.util

    def _load(name: str):
        path = Path(__file__).resolve().parent / "unit" / "test_data_modules.py"
        spec = importlib.util.spec_from_file_location("divlab_test_data_writers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    return _load


@pytest.fixture
def generator_at_fit_start(monkeypatch) -> dict:
    """Fills {'task': the OneStepTask that was fitted, 'before': its generator's weights when fitting started}."""
    import divlab.tasks.one_step as one_step

    seen = {}
    original = one_step.OneStepTask.on_fit_start

    def remember(self):
        seen["before"] = {k: v.clone() for k, v in self.generator.state_dict().items()}
        seen["task"] = self
        original(self)

    monkeypatch.setattr(one_step.OneStepTask, "on_fit_start", remember)
    return seen


@pytest.fixture
def table_cells():
    """table_cells(spec, tmp_path) -> [(row, column, cfg)]: every cell of a paper table, composed as the
    table script composes it (outputs under tmp_path)."""

    def _cells(spec, tmp_path):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                return [(row, column, compose("train", overrides=[*spec.overrides(row, column),
                                                                  f"paths.output_root={tmp_path}"]))
                        for row in spec.rows for column in spec.columns]
        finally:
            GlobalHydra.instance().clear()

    return _cells
