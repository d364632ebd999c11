"""task=code_eval (divlab.tasks.code_eval): the decode group composes for greedy, contrastive and uscd with the
settings generate() takes; `divlab task=code_eval decode=uscd` runs from the command line on the tiny local
Llama with 2 problems and writes pass@1, the applied fraction and the completions; a tiny GPT on bytes runs
through the runner; bad decode settings fail in one sentence before any model is built."""

import json
from pathlib import Path

import pytest

from divlab.errors import ConfigError


@pytest.mark.parametrize("mode", ["greedy", "contrastive", "uscd"])
def test_decode_groups_compose(compose_cfg, mode):
    cfg = compose_cfg("task=code_eval", f"decode={mode}")
    assert cfg.decode.mode == mode
    assert set(cfg.decode) == {"mode", "threshold", "weight", "divergence", "plausibility", "max_new_tokens"}
    assert cfg.task.fit is False and "decode" in cfg.task.uses
    assert cfg.data.name == "fewshot_code" and cfg.student.model._target_ == "divlab.models.hf.build_hf_lm"
    if mode != "greedy":
        assert cfg.decode.weight > 0
    if mode == "uscd":
        assert 0 < cfg.decode.threshold < float("inf")


def test_decode_group_changes_the_run_hash(compose_cfg):
    from divlab.utils.hashing import run_config_hash

    hashes = {run_config_hash(compose_cfg("task=code_eval", f"decode={m}")) for m in ("greedy", "uscd")}
    assert len(hashes) == 2


def test_cli_uscd_run_on_a_tiny_llama(run_cli, outputs, tiny_llama_dir):
    result = run_cli(
        "task=code_eval",
        "decode=uscd",
        "decode.threshold=0.0",  # contrast at every step: the applied fraction must be 1
        "decode.max_new_tokens=6",
        "student.model.source=local",
        f"+student.model.path={tiny_llama_dir}",
        "data.datamodule.limit=2",
        "data.datamodule.n_examples=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = Path(outputs).glob("code_eval/*/*/seed0/metrics.json")
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert metrics["test/n_problems"] == 2
    assert metrics["test/applied_fraction"] == pytest.approx(1.0)
    assert 0.0 <= metrics["test/pass_at_1"] <= 1.0
    rows = [json.loads(line) for line in (metrics_file.parent / "completions.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["fewshot/0", "fewshot/1"]
    assert all(r["status"] in ("passed", "failed", "timeout", "error") and r["steps"] >= 1 for r in rows)
    assert metrics["test/pass_at_1"] == sum(r["status"] == "passed" for r in rows) / 2


def test_tiny_gpt_greedy_through_the_runner(compose_cfg):
    from divlab.runner import run

    cfg = compose_cfg(
        "task=code_eval",
        "student=gpt_tiny",
        "student.model.context_length=512",
        "decode.max_new_tokens=4",
        "data.datamodule.limit=2",
    )
    record = run(cfg)
    metrics = record["metrics"]
    assert metrics["test/n_problems"] == 2 and metrics["test/applied_fraction"] == 0.0
    assert metrics["test/n_failed"] + metrics["test/n_error"] + 2 * metrics["test/pass_at_1"] == 2


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("decode.weight=-1", "decode.weight"),
        ("decode.threshold=-0.5", "decode.threshold"),
        ("decode.mode=beam", "decode.mode"),
        ("decode.max_new_tokens=0", "decode.max_new_tokens"),
        ("code_eval.timeout=0", "code_eval.timeout"),
    ],
)
def test_bad_decode_settings_fail_in_one_sentence(compose_cfg, override, key):
    from divlab.tasks.code_eval import build

    cfg = compose_cfg("task=code_eval", "decode=uscd", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(cfg, datamodule=None)
