"""Text windows: the test's generation metrics with a judge (trained once, cached like a teacher),
SequenceMatch on Shakespeare windows, a judge that cannot be built, and the seqmatch_text table."""

import json
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.metrics.judge import judge_config
from divlab.provision.teacher import cached_teacher_path
from divlab.runner import run
from divlab.tables.cells import plan
from divlab.tables.spec import load_table

CONF = Path(__file__).resolve().parents[2] / "conf"
# a small corpus slice (36k train bytes, 15 test windows) and a GPT that fits the 129-byte windows
TEXT_FAST = [
    "data.datamodule.max_chars=40000",
    "student.model.n_layer=1",
    "student.model.d_model=32",
    "lm.text_windows=12",
]
JUDGE_FAST = [
    "judge.model.n_layer=1",
    "judge.model.n_head=2",
    "judge.model.d_model=32",
    "judge.train.max_epochs=1",
    "judge.train.limit_train_batches=3",
]
TEXT_KEYS = ("test/distinct_2", "test/distinct_3", "test/repetition_4", "test/bs_rate", "test/ppl")


def judge_path(cfg) -> Path:
    return cached_teacher_path(judge_config(cfg, vocab_size=260))


def test_lm_and_seqmatch_on_text_with_one_cached_judge(compose_cfg, capsys):
    cfg = compose_cfg("experiment=lm/shakespeare", *TEXT_FAST, *JUDGE_FAST)
    path = judge_path(cfg)
    assert not path.exists()
    m = run(cfg)["metrics"]
    assert "training the judge once" in capsys.readouterr().out and path.is_file()
    for key in (*TEXT_KEYS, "test/judge_ppl", "test/judge_ppl_real", "test/mauve", "best/test/mauve"):
        assert key in m, key
    assert 0 <= m["test/mauve"] <= 1 and 0 < m["test/distinct_2"] <= 1 and 0 <= m["test/repetition_4"] <= 1
    assert 1 < m["test/judge_ppl_real"] < 260 and m["test/judge_ppl"] > 1
    ckpt = torch.load(path, weights_only=True)  # the cache is a plain weights-only divlab checkpoint
    assert (
        ckpt["divlab"]["kind"] == "teacher"
        and "test/loss" in json.loads(path.with_suffix(".json").read_text())["metrics"]
    )

    # SequenceMatch on the same windows: SM steps with text rollouts; the cached judge is reused
    stamp = path.stat().st_mtime_ns
    sm = compose_cfg(
        "experiment=seqmatch/shakespeare",
        *TEXT_FAST,
        *JUDGE_FAST,
        "seqmatch.bc_epochs=0",
        "seqmatch.rollout_every=1",
        "seqmatch.rollout_batch=8",
        "seqmatch.p_noise=0.2",
    )
    assert judge_path(sm) == path
    s = run(sm)["metrics"]
    assert "training the judge" not in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    for key in ("train/sm", "train/sm_psi", "train/bs_rate", "test/judge_ppl", "test/mauve", *TEXT_KEYS):
        assert key in s, key
    assert s["train/rollout_eos"] == 0  # text rollouts never sample <eos>
    assert all(v == v for v in s.values())  # no NaN
    assert s["test/judge_ppl_real"] == pytest.approx(m["test/judge_ppl_real"])  # same judge, same windows


def test_seqmatch_text_noise_comes_from_the_corpus_bytes(compose_cfg):
    from divlab.tasks.seqmatch import build
    from divlab.utils.checks import build as build_spec

    cfg = compose_cfg("experiment=seqmatch/shakespeare", *TEXT_FAST, "~judge")
    dm = build_spec(cfg.data.datamodule, seed=0)
    task = build(cfg, datamodule=dm)
    text_bytes = set(dm.dataset("train").windows.flatten().tolist())
    assert set(task.noise_ids.tolist()) == text_bytes and len(text_bytes) < dm.tokenizer.n_content
    assert task.text_data and task.judge is None


def test_without_a_judge_the_judge_metrics_are_skipped(compose_cfg):
    m = run(compose_cfg("experiment=lm/shakespeare", *TEXT_FAST, "~judge"))["metrics"]
    assert all(k in m for k in TEXT_KEYS)
    assert not any("judge" in k or "mauve" in k for k in m)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["judge.checkpoint=/no/such/judge.ckpt"], r"judge\.checkpoint=/no/such/judge\.ckpt does not exist"),
        (["judge.train.task=classify"], r"judge\.train\.task='classify' cannot train"),
        (["judge.model._target_=divlab.models.NoSuchModel"], r"judge\.model cannot be built"),
        (["judge.model.context_length=64"], r"judge\.model\.context_length=64 is shorter"),
    ],
)
def test_a_judge_that_cannot_be_built_is_one_sentence(compose_cfg, overrides, message):
    cfg = compose_cfg("experiment=lm/shakespeare", *TEXT_FAST, *JUDGE_FAST, *overrides)
    with pytest.raises(ConfigError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)


def test_a_judge_checkpoint_of_another_shape_and_a_judge_on_arithmetic(compose_cfg, tmp_path):
    from divlab.models import GPT

    other = GPT(vocab_size=17, n_layer=1, n_head=2, d_model=32, context_length=256)
    path = tmp_path / "other.ckpt"
    torch.save({"divlab": {"format": 1, "kind": "teacher"}, "state_dict": other.state_dict()}, path)
    cfg = compose_cfg("experiment=lm/shakespeare", *TEXT_FAST, *JUDGE_FAST, f"judge.checkpoint={path}")
    with pytest.raises(ConfigError, match="does not fit judge.model"):
        run(cfg)
    cfg = compose_cfg("experiment=lm/arith", "+judge=gpt_mid")
    with pytest.raises(ConfigError, match="not text windows; remove it with ~judge"):
        run(cfg)


def test_seqmatch_text_table_composes(tmp_path, monkeypatch):
    spec = load_table("seqmatch_text", CONF)
    assert spec.baseline_row == "MLE" and {"MLE", "SM-chi2, <bs>"} <= {r.name for r in spec.rows}
    metrics = {spec.metric_of(c.name) for c in spec.columns}
    assert {"test/distinct_2", "test/repetition_4", "test/judge_ppl", "test/mauve", "test/ppl"} <= metrics
    monkeypatch.chdir(tmp_path)
    jobs = plan(spec, conf_dir=str(CONF), extra=[f"paths.output_root={tmp_path}"])
    assert all(j.state == "missing" for j in jobs), [j.error for j in jobs if j.error]
    run_dirs = {j.row: set() for j in jobs}
    for j in jobs:
        run_dirs[j.row].add(j.run_dir)
    assert all(len(dirs) == len(spec.seeds) for dirs in run_dirs.values())  # one run per (row, seed)
    assert len(set().union(*run_dirs.values())) == len(spec.rows) * len(spec.seeds)
    assert any("/lm/lm/shakespeare/" in str(d) for d in run_dirs["MLE"])
