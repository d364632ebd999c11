"""One-step distillation on 8x8 digits with the U-Net: a few generator/critic steps, the teacher rows, the image
metrics' classifier taken from the KD teacher cache, and the onestep_digits table's plan."""

from pathlib import Path

import torch
from omegaconf import open_dict

from divlab.provision.teacher import cached_teacher_path
from divlab.runner import run
from divlab.tables.cells import plan
from divlab.tables.spec import load_table

CONF = Path(__file__).resolve().parents[2] / "conf"
# debug=fast trains every teacher for 1 epoch; the metric classifier gets the same (so it is the KD teacher
# of `experiment=kd/digits debug=fast`); 128 eval samples, a 2-step Heun teacher panel.
QUICK = ["image_metrics.classifier.train.max_epochs=1", "image_metrics.eval_samples=128"]


def classifier_cfg(cfg):
    sub = cfg.copy()
    with open_dict(sub):
        sub.teacher, sub.data = cfg.image_metrics.classifier, cfg.image_metrics.data
    return sub


def test_one_step_digits_unet_steps_change_the_generator(compose_cfg, generator_at_fit_start):
    seen = generator_at_fit_start
    cfg = compose_cfg(
        "experiment=onestep/digits",
        "divergence=forward_kl",
        "one_step.critic_steps=2",
        "trainer.limit_train_batches=2",
        "one_step.teacher_sample_steps=2",
        *QUICK,
    )
    record = run(cfg)
    task = seen["task"]
    assert type(task.generator.net).__name__ == "UNetSmall"
    after = task.generator.state_dict()
    assert any(not torch.equal(seen["before"][k], after[k]) for k in after), "the generator did not move"
    assert int(task.generator_steps) == 2 * 2  # 2 data batches of 128, 2 rounds of 64 each
    assert record["global_step"] == 4 * (2 + 1)  # Lightning counts every optimiser step
    m = record["metrics"]
    for key in (
        "test/fd",
        "test/class_tv",
        "test/class_conf",
        "test/precision",
        "test/recall",
        "test/nfe",
        "test/sec_per_1k",
        "val/sliced_w",
        "train/generator_steps",
        "train/h_max",
    ):
        assert key in m, key
    assert m["test/nfe"] == 1.0 and m["test/fd"] > 0 and 0 <= m["test/class_tv"] <= 1
    assert (Path(record["run_dir"]) / "samples.png").read_bytes()[:4] == b"\x89PNG"
    # the metric classifier is cached where the KD teacher of experiment=kd/digits (same recipe) is
    kd = compose_cfg("experiment=kd/digits")
    assert cached_teacher_path(classifier_cfg(cfg)) == cached_teacher_path(kd)
    assert cached_teacher_path(kd).is_file()
    assert cached_teacher_path(cfg).is_file() and cached_teacher_path(cfg) != cached_teacher_path(kd)


def test_digits_teacher_rows_sample_and_score(compose_cfg):
    record = run(
        compose_cfg("experiment=onestep/digits_teacher", "sample.method=euler", "sample.num_steps=2", *QUICK)
    )
    m = record["metrics"]
    assert m["test/nfe"] == 2.0 and record["global_step"] == 0  # sampling only
    assert {"test/fd", "test/class_tv", "test/precision", "test/recall"} <= set(m)
    assert "test/coverage" not in m and "test/sliced_w" not in m  # no 2-D metrics on images
    assert (Path(record["run_dir"]) / "samples.png").is_file()


def test_onestep_digits_table_plans_every_row(tmp_path, monkeypatch):
    spec = load_table("onestep_digits", CONF)
    names = [r.name for r in spec.rows]
    for required in (
        "teacher, Euler NFE 1",
        "teacher, Euler NFE 2",
        "teacher, Euler NFE 4",
        "teacher, Euler NFE 18",
        "teacher, Heun NFE 35",
        "reverse KL (DMD)",
        "forward KL",
        "JS",
    ):
        assert required in names
    assert [spec.metric_of(c.name) for c in spec.columns] == [
        "test/fd",
        "test/class_tv",
        "test/precision",
        "test/recall",
    ]
    assert spec.higher_is_better_of("FD") is False and spec.higher_is_better_of("recall (%)") is True
    monkeypatch.chdir(tmp_path)
    jobs = plan(spec, conf_dir=str(CONF), seeds=[0], extra=[f"paths.output_root={tmp_path}"])
    assert all(j.state == "missing" for j in jobs), [j.error for j in jobs if j.error]
    assert len({j.run_dir for j in jobs}) == len(names)  # one run per row, read by every column


def test_image_data_without_image_metrics_is_one_sentence(compose_cfg):
    import pytest

    from divlab.data.digits import DigitsDataModule
    from divlab.errors import ConfigError
    from divlab.metrics.image import build_image_scorer

    cfg = compose_cfg("experiment=onestep/digits")
    with open_dict(cfg):
        del cfg["image_metrics"]
    with pytest.raises(ConfigError, match="set image_metrics"):
        build_image_scorer(cfg, DigitsDataModule())
    with open_dict(cfg):
        cfg.image_metrics = {"classifier": None, "data": None, "feature": "pool"}
    with pytest.raises(ConfigError, match="image_metrics.classifier must be set"):
        build_image_scorer(cfg, DigitsDataModule())
