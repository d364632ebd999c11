"""task=dpo end to end on a tiny random HF Llama (policy and its frozen reference) and tiny preference data:
the CLI with divergence=js, the policy moves while the reference does not, f-DPO at the start model, bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run

pytest.importorskip("transformers")


@pytest.fixture
def tiny_dpo(tiny_llama_dir):
    d = str(tiny_llama_dir)
    return [
        "task=dpo",
        "student.model.source=local",
        f"+student.model.path={d}",
        "data.datamodule.n_train=8",
        "data.datamodule.n_val=4",
        "data.datamodule.n_test=4",
        "data.datamodule.batch_size=4",
        "data.datamodule.max_prompt_tokens=48",
        "data.datamodule.max_response_tokens=16",
        "optimizer.lr=0.01",
        "callbacks=none",
    ]


def test_cli_dpo_js_runs(run_cli, tiny_dpo, outputs):
    proc = run_cli(*tiny_dpo, "divergence=js", "debug=fast", "dpo.beta=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (outputs / "dpo").rglob("metrics.json")
    m = json.loads(path.read_text())["metrics"]
    for key in (
        "train/loss",
        "train/accuracy",
        "train/margin",
        "val/loss",
        "val/kl_ref",
        "test/accuracy",
        "test/margin",
    ):
        assert key in m and math.isfinite(m[key]), key
    assert 0 <= m["test/accuracy"] <= 100 and m["val/kl_ref"] >= 0
    config = (path.parent / "config.yaml").read_text()
    assert "name: js" in config and "beta: 0.5" in config


def test_start_model_is_log2_and_policy_moves_reference_does_not(compose_cfg, tiny_dpo, monkeypatch):
    from divlab.tasks import dpo

    seen = {}
    original = dpo.DPOTask.on_fit_start

    def remember(self):
        original(self)
        seen["task"] = self
        seen["policy"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        seen["reference"] = {k: v.clone() for k, v in self.reference.state_dict().items()}
        batch = next(iter(self.trainer.datamodule.val_dataloader()))
        with torch.no_grad():
            seen["start"] = self.pair_terms(batch, with_kl=True)

    monkeypatch.setattr(dpo.DPOTask, "on_fit_start", remember)
    record = run(
        compose_cfg(*tiny_dpo, "divergence=alpha", "divergence.alpha=0.5", "trainer.limit_train_batches=2")
    )
    task, start = seen["task"], seen["start"]
    # policy == reference at the start: every margin is 0, so the loss is log 2 and nothing is preferred
    assert start["loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert start["accuracy"].item() == 0 and abs(start["kl_ref"].item()) < 1e-6
    assert all(torch.equal(v, seen["reference"][k]) for k, v in seen["policy"].items())
    # after training: the policy moved, the reference is untouched, frozen and outside the checkpoint
    assert any(not torch.equal(v, task.model.state_dict()[k]) for k, v in seen["policy"].items())
    assert all(torch.equal(v, task.reference.state_dict()[k]) for k, v in seen["reference"].items())
    assert not any(p.requires_grad for p in task.reference.parameters())
    assert not any(k.startswith("reference") for k in task.state_dict())
    assert record["metrics"]["val/kl_ref"] > 0


def write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "kind,words",
    [
        ("missing", r"line 3 has no usable 'chosen' field"),
        ("tied", "line 2 has chosen == rejected"),
        ("beta", r"dpo\.beta must be a finite number > 0"),
        ("divergence", "divergence=total_variation has no f'"),
        ("alpha", r"divergence\.alpha=1\.5 is outside \(0, 1\)"),
    ],
)
def test_bad_input_fails_before_training(compose_cfg, tiny_dpo, outputs, tmp_path, kind, words):
    good = [
        {"prompt": f"What is {i} plus 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}"} for i in range(20)
    ]
    rows = list(good)
    if kind == "missing":
        rows[2] = {"prompt": "What is 2 plus 2?", "rejected": "5"}
    if kind == "tied":
        rows[1] = {"prompt": "What is 2 plus 2?", "chosen": "4", "rejected": "4"}
    extra = [f"data.datamodule.source={write(tmp_path / 'prefs.jsonl', rows)}"]
    extra += {
        "beta": ["dpo.beta=0"],
        "divergence": ["divergence=total_variation"],
        "alpha": ["divergence=alpha", "divergence.alpha=1.5"],
    }.get(kind, [])
    with pytest.raises(ConfigError, match=words):
        run(compose_cfg(*tiny_dpo, *extra))
    assert not (outputs / "dpo").exists()
