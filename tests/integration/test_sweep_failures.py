"""A sweep (-m) with failing jobs finishes the others and records each failure in its job folder."""

import json
import textwrap
from pathlib import Path

import yaml


def job_folders(outputs: Path) -> list[Path]:
    (sweep,) = (outputs / "multirun").iterdir()
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def finished_runs(outputs: Path) -> list[Path]:
    return sorted(p for p in outputs.rglob("metrics.json") if "multirun" not in p.parts)


def test_basic_sweep_records_failures_and_finishes_the_rest(run_cli, outputs):
    # job 0: fine; job 1: a config error (max_epochs=0); job 2: a failure while training (num_workers=-1: the
    # DataLoader's ValueError; batch_size=0 is a config error since issue 15)
    result = run_cli(
        "-m",
        "experiment=kd/digits_ce",
        "debug=fast",
        "trainer.max_epochs=1,0",
        "data.datamodule.num_workers=0,-1",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(finished_runs(outputs)) == 1 and result.stdout.count("run_dir: ") == 1
    failed = {
        f.name: json.loads((f / "failed.json").read_text())
        for f in job_folders(outputs)
        if (f / "failed.json").exists()
    }
    assert sorted(failed) == ["1", "2", "3"]

    def failure(*overrides: str) -> dict:
        (found,) = [r for r in failed.values() if set(overrides) <= set(r["overrides"])]
        return found

    config_error = failure("trainer.max_epochs=0", "data.datamodule.num_workers=0")
    assert (
        config_error["type"] == "ConfigError"
        and "trainer.max_epochs must be a number >= 1" in config_error["error"]
    )
    build_error = failure("trainer.max_epochs=1", "data.datamodule.num_workers=-1")
    assert build_error["type"] != "ConfigError" and "\n" not in build_error["error"]
    for name in failed:
        assert "Traceback" in (job_folders(outputs)[int(name)] / "error.txt").read_text()
    assert "3 sweep job(s) failed; the others finished" in result.stderr
    assert "Traceback" not in result.stderr


def test_optuna_study_survives_a_failing_trial(run_cli, outputs, tmp_path):
    """Optuna over max_epochs in {0, 1} (a search space of the test's own, through hydra.searchpath): a trial
    with 0 fails as a ConfigError, Optuna records it as a failed trial and the study goes on and writes its
    results. The random sampler with seed 0 draws 1, 0, 1. (Not the grid sampler: hydra-optuna-sweeper 1.3
    crashes when the trial that exhausts a grid fails, whatever the job returns.)"""
    user_conf = tmp_path / "user_conf"
    (user_conf / "hparams_search").mkdir(parents=True)
    (user_conf / "hparams_search" / "one_bad.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /hydra/sweeper: optuna
          - override /hydra/sweeper/sampler: random
        optimized_metric: best/val/acc
        hydra:
          mode: MULTIRUN
          sweeper:
            direction: maximize
            n_trials: 3
            n_jobs: 1
            max_failure_rate: 1.0
            sampler:
              seed: 0
            params:
              trainer.max_epochs: choice(0, 1)
        """)
    )
    result = run_cli(
        "-m",
        f"hydra.searchpath=[file://{user_conf}]",
        "hparams_search=one_bad",
        "experiment=kd/digits_ce",
        "debug=fast",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(finished_runs(outputs)) == 1
    (failed,) = [json.loads(p.read_text()) for p in (outputs / "multirun").rglob("failed.json")]
    assert "trainer.max_epochs=0" in failed["overrides"] and "must be a number >= 1" in failed["error"]
    (results,) = (outputs / "multirun").glob("*/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_params"] == {"trainer.max_epochs": 1}
