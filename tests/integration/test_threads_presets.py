"""threads=auto, compile=true and the debug presets (profile, fast_dev_run) and callbacks=throughput."""

import json
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import compile_trained_model, run
from divlab.tables.cells import Runner
from divlab.utils.threads import available_cores, choose_threads


def test_threads_auto_shares_the_cores_among_parallel_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("DIVLAB_JOBS", raising=False)
    assert choose_threads("auto") == available_cores()
    monkeypatch.setenv("DIVLAB_JOBS", "4")
    assert choose_threads("auto") == max(1, available_cores() // 4)
    monkeypatch.setenv("DIVLAB_JOBS", str(10 * available_cores()))
    assert choose_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert choose_threads("auto") == 3
    assert choose_threads(2) == 2 and choose_threads(None) is None
    for bad in (0, -1, "many", True):
        with pytest.raises(ConfigError, match="threads must be auto, null or a positive integer"):
            choose_threads(bad)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("DIVLAB_JOBS", "zero")
    with pytest.raises(ConfigError, match="DIVLAB_JOBS must be a positive integer"):
        choose_threads("auto")


def test_table_runner_tells_its_cells_how_many_run_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("DIVLAB_JOBS", raising=False)
    assert Runner(log_dir=tmp_path, jobs=3).env()["DIVLAB_JOBS"] == "3"


def test_run_applies_threads_before_building(compose_cfg):
    before = torch.get_num_threads()
    try:
        run(compose_cfg("experiment=kd/digits_ce", "threads=1", "debug=fast_dev_run"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_compile_compiles_the_trained_model_in_place():
    class Task:
        def __init__(self):
            self.model = torch.nn.Linear(3, 2)

    task = Task()
    keys = list(task.model.state_dict())
    assert compile_trained_model(task) == "model"
    assert task.model._compiled_call_impl is not None and list(task.model.state_dict()) == keys
    with pytest.raises(ConfigError, match="compile=true: object has no `model` or `generator`"):
        compile_trained_model(object())


def test_compile_key_is_not_part_of_the_run_directory(compose_cfg):
    from divlab.runner import run_directory

    base = run_directory(compose_cfg("experiment=kd/digits_ce"))
    assert run_directory(compose_cfg("experiment=kd/digits_ce", "compile=true", "threads=3")) == base


def test_debug_profile_writes_the_profiler_report_in_the_run_directory(compose_cfg):
    record = run(compose_cfg("experiment=kd/digits_ce", "debug=profile", fast=False))
    (report,) = Path(record["run_dir"]).rglob("fit-profile.txt")
    assert "run_training_epoch" in report.read_text()


def test_debug_fast_dev_run_runs_one_batch(compose_cfg):
    record = run(compose_cfg("experiment=kd/digits_ce", "debug=fast_dev_run", fast=False))
    assert record["global_step"] == 1 and "test/acc" in record["metrics"]


def test_throughput_callback_logs_samples_per_second(compose_cfg):
    record = run(
        compose_cfg(
            "experiment=kd/digits_ce",
            "callbacks=throughput",
            "callbacks.throughput.window_size=2",
            "trainer.log_every_n_steps=1",
        )
    )
    header = (Path(record["run_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/device/samples_per_sec" in header.split(","), header
    assert json.loads((Path(record["run_dir"]) / "metrics.json").read_text())["metrics"]
