"""Every mixer trains a tiny real GPT for a few steps on two groups; Aioli's probe steps count in the budget."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from divlab.runner import run

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = [
    "data.groups=[shakespeare,python_docs]",
    "data.datamodule.max_chars=12000",
    "data.datamodule.context_length=16",
    "data.datamodule.batch_size=4",
    "data.datamodule.val_windows=4",
    "data.datamodule.test_windows=4",
    "mix_lm.model.d_model=16",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
MIXERS = {
    "stratified": [],
    "static": ["mixer.weights=[1,3]"],
    "aioli": ["mixer.update_every=6", "mixer.lp_rounds=1", "mixer.lp_steps=1"],
    "grid": ["mixer.points=4"],
    "dml": ["mixer.points=4"],  # the same 4 static runs as grid (reused)
    "doremi": [],  # its reference is the stratified run (reused)
    "skillit": ["mixer.update_every=4"],
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("mixing_outputs")


def run_mixer(name, outputs, *extra):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment=mixing/{name}",
                f"paths.output_root={outputs}",
                *TINY,
                *MIXERS[name],
                *extra,
            ],
        )
    GlobalHydra.instance().clear()
    return run(cfg)


@pytest.mark.parametrize("name", list(MIXERS))
def test_each_mixer_trains_a_tiny_lm(name, outputs):
    record = run_mixer(name, outputs)
    m, run_dir = record["metrics"], Path(record["run_dir"])
    assert record["global_step"] == 12
    for g in ("shakespeare", "python_docs"):
        assert np.isfinite(m[f"test/ppl/{g}"]) and m[f"test/ppl/{g}"] == pytest.approx(
            np.exp(m[f"test/loss/{g}"]), rel=1e-5
        )
    assert m["test/avg_ppl"] == pytest.approx(
        (m["test/ppl/shakespeare"] + m["test/ppl/python_docs"]) / 2, rel=1e-5
    )
    p = json.loads((run_dir / "proportions.json").read_text())
    assert (run_dir / "proportions.png").stat().st_size > 0
    assert np.isclose(sum(p["final"]), 1.0)
    if name == "static":
        assert np.allclose(p["final"], [0.25, 0.75])
    if name == "grid":
        grid = json.loads((run_dir / "grid.json").read_text())
        best = min(grid["sweep"], key=lambda r: r["val/avg_loss"])
        assert len(grid["sweep"]) == 4 and np.allclose(p["final"], best["weights"])
    if name == "doremi":
        assert np.allclose(p["final"], json.loads((run_dir / "doremi.json").read_text())["mean_alpha"])


def test_aioli_probe_steps_count_in_the_budget(outputs):
    record = run_mixer("aioli", outputs)  # 12 steps, rounds of 6 = 2 probes x 1 step + 4 steps
    run_dir = Path(record["run_dir"])
    assert record["global_step"] == 12 and record["metrics"]["train/probe_steps"] == 4
    history = json.loads((run_dir / "proportions.json").read_text())["history"]
    probes = [h["step"] for h in history if h["reason"].startswith("probe")]
    assert probes == [0, 1, 6, 7]
    rounds = json.loads((run_dir / "aioli_A.json").read_text())["rounds"]
    assert [r["step"] for r in rounds] == [2, 8]
    assert all(np.isclose(np.sum(r["A"]), 1.0) for r in rounds)  # normalised


def test_missing_mixer_setting_fails_in_one_sentence(outputs):
    from divlab.errors import ConfigError

    with pytest.raises(ConfigError, match="update_every"):
        run_mixer("aioli", outputs, "mixer.update_every=2")  # 2 probes need more than 2 steps
