"""The command line in subprocesses: single runs, bad input, multirun (also with DDP), sweeps."""

import json
from pathlib import Path

import pytest


def metrics_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("metrics.json") if "teachers" not in p.parts)


def test_cli_run_then_rerun_reports_finished(run_cli, outputs):
    first = run_cli("experiment=kd/digits", "debug=fast")
    assert first.returncode == 0, first.stderr[-3000:]
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: ")
    run_dir = Path(last.removeprefix("run_dir: "))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc" in record["metrics"] and run_dir.is_relative_to(outputs)
    second = run_cli("experiment=kd/digits", "debug=fast")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already finished" in second.stdout and "training" not in second.stdout
    assert second.stdout.strip().splitlines()[-1] == last


def test_cli_bad_value_is_one_line_without_traceback(run_cli):
    result = run_cli("experiment=kd/digits", "debug=fast", "distill.temperature=0")
    assert result.returncode == 2
    assert "error: distill.temperature must be a number > 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_unknown_group_option_lists_choices(run_cli):
    result = run_cli("experiment=kd/digits", "divergence=kullback")
    assert result.returncode != 0
    assert "Could not find 'divergence/kullback'" in result.stderr and "forward_kl" in result.stderr


@pytest.mark.slow  # ~65 s; a ddp_spawn run stays in the fast suite (test_lm_distill_ddp.py)
def test_multirun_two_jobs_with_ddp_spawn(run_cli, outputs):
    """`-m` over two divergences, each job a 2-process CPU DDP run (ddp_spawn, gloo)."""
    result = run_cli(
        "-m", "experiment=kd/digits", "divergence=forward_kl,reverse_kl", "trainer=ddp_sim", "debug=fast"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in metrics_files(outputs)]
    assert len(records) == 2 and len({r["run_dir"] for r in records}) == 2
    assert all(r["world_size"] == 2 and "test/acc" in r["metrics"] for r in records)
    assert all(r["global_step"] > 0 and r["epochs"] >= 1 for r in records)  # read back from last.ckpt
    assert result.stdout.count("run_dir: ") == 2


def test_multirun_refuses_subprocess_ddp(run_cli, outputs):
    result = run_cli(
        "-m", "experiment=kd/digits", "trainer=ddp_sim", "trainer.strategy=ddp", "seed=0,1", "debug=fast"
    )
    assert result.returncode == 2
    assert "trainer.strategy=ddp cannot run under Hydra multirun" in result.stderr
    assert not metrics_files(outputs)


def test_optuna_sweep_over_temperature_and_weight(run_cli, outputs):
    result = run_cli(
        "-m", "hparams_search=kd_optuna", "experiment=kd/digits", "debug=fast", "hydra.sweeper.n_trials=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configs = [p.parent / "config.yaml" for p in metrics_files(outputs)]
    assert len(configs) == 2
    assert len({c.read_text() for c in configs}) == 2  # two different (temperature, kd_weight) points
    assert list(outputs.glob("multirun/*/optimization_results.yaml"))


@pytest.mark.slow
def test_multirun_with_submitit_local_launcher(run_cli, outputs):
    result = run_cli("-m", "launcher=submitit_local", "experiment=kd/digits", "seed=0,1", "debug=fast")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(metrics_files(outputs)) == 2


@pytest.mark.slow
def test_single_run_with_subprocess_ddp(run_cli, outputs):
    """trainer.strategy=ddp (Lightning re-launches the command per rank) outside multirun."""
    result = run_cli("experiment=kd/digits", "trainer=ddp_sim", "trainer.strategy=ddp", "debug=fast")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = metrics_files(outputs)
    assert json.loads(path.read_text())["world_size"] == 2
    assert result.stdout.count("run_dir: ") == 1
