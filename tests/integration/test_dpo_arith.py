"""task=dpo with a divlab GPT policy on arithmetic preferences (experiment=dpo/arith, tiny): the start model is
trained once and cached, its wrong samples become the rejected answers (cached), every metric of the task is
logged, the reference stays the start; a mismatched policy/data pair fails before training in one sentence."""

import json
import math

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run

TINY = [
    "experiment=dpo/arith",
    "data.datamodule.arith.n_train=256",
    "data.datamodule.arith.n_val=16",
    "data.datamodule.arith.n_test=32",
    "data.datamodule.n_train=64",
    "data.datamodule.n_val=16",
    "data.datamodule.n_test=24",
    "data.datamodule.batch_size=16",
    "data.datamodule.rejected_samples=4",
    "student.model.d_model=32",
    "dpo.init_train.max_epochs=1",
    "dpo.samples=2",
    "optimizer.lr=0.01",
]
METRICS = ("accuracy", "margin", "kl_ref", "exact_match", "ece", "confidence", "distinct_1", "distinct_2")


def test_gpt_dpo_runs_end_to_end_and_caches_its_start_and_rejected(compose_cfg, outputs, teacher_dir):
    from divlab.tasks import dpo

    seen = {}
    build = dpo.build

    def spy(cfg, *, datamodule=None):
        task = build(cfg, datamodule=datamodule)
        seen["start"] = {k: v.clone() for k, v in task.reference.state_dict().items()}
        seen["task"], seen["dm"] = task, datamodule
        return task

    cached = set(teacher_dir.glob("*.ckpt"))  # the session's teacher cache (other tests' models too)
    cfg = compose_cfg(*TINY, "divergence=js")
    cfg.task.builder = f"{__name__}.SPY"
    globals()["SPY"] = spy
    run(cfg)
    (path,) = (outputs / "dpo").rglob("metrics.json")
    m = json.loads(path.read_text())["metrics"]
    for name in (*METRICS, "entropy", "kl_seq", "rejected_fallback"):
        assert math.isfinite(m[f"test/{name}"]), name
    assert 0 <= m["test/exact_match"] <= 100 and 0 <= m["test/ece"] <= 100 and 0 < m["test/distinct_2"] <= 1
    assert len(set(teacher_dir.glob("*.ckpt")) - cached) <= 1  # the start, cached (or already cached)
    assert len(list((outputs / "rejected").glob("*.jsonl"))) == 3  # train, val, test sampled once
    task, dm = seen["task"], seen["dm"]
    ref = task.reference.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in seen["start"].items())  # the reference never trains
    moved = [k for k, v in task.model.state_dict().items() if not torch.equal(v, ref[k])]
    assert moved  # the policy does
    for split in ("train", "val", "test"):
        for e in dm.examples(split):
            assert e["chosen"] == e["answer"] != e["rejected"] and dm.wrong(e["rejected"], e["answer"])


def test_second_seed_trains_its_own_start(compose_cfg, outputs, teacher_dir):
    from hydra.utils import instantiate

    from divlab.tasks.dpo_policy import gpt_policy

    cached, cached_meta = set(teacher_dir.glob("*.ckpt")), set(teacher_dir.glob("*.json"))
    per_seed = (*TINY, "dpo.init_train.seed=null")  # null: the run's seed trains the start
    cfg0, cfg1 = compose_cfg(*per_seed), compose_cfg(*per_seed, "seed=1")
    dm = instantiate(cfg0.data.datamodule)
    w0 = gpt_policy(cfg0, dm).output_weight.detach().clone()
    w0_again = gpt_policy(cfg0, dm).output_weight.detach()
    w1 = gpt_policy(cfg1, dm).output_weight.detach()
    assert torch.equal(w0, w0_again) and not torch.equal(w0, w1)
    assert len(set(teacher_dir.glob("*.ckpt")) - cached) <= 2
    # the recipe's fixed init_train.seed: every run seed starts from the one model that seed trains
    shared = [gpt_policy(compose_cfg(*TINY, f"seed={s}"), dm).output_weight.detach() for s in (0, 1)]
    assert torch.equal(shared[0], shared[1]) and not torch.equal(shared[0], w0)
    # the starts this test asked for (the session's cache also holds other tests' teachers)
    mine = [json.loads(p.read_text()) for p in set(teacher_dir.glob("*.json")) - cached_meta]
    shapes = {(s["teacher"]["model"].get("d_model"), s["data"]["datamodule"].get("n_train")) for s in mine}
    assert shapes <= {(32, 256)}  # the student's width, the data's arithmetic problems
    assert {s["teacher"]["train"]["seed"] for s in mine} <= {0, 1, 2}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["dpo.beta=-1"], r"dpo\.beta must be a finite number > 0"),
        (["divergence=total_variation"], r"divergence=total_variation has no f'"),
        (["dpo.init=/nowhere.ckpt"], r"dpo\.init=/nowhere\.ckpt does not exist"),
    ],
)
def test_bad_input_fails_before_training(compose_cfg, outputs, extra, words):
    with pytest.raises(ConfigError, match=words):
        run(compose_cfg(*TINY, *extra))
    assert not (outputs / "dpo").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        ([], r"dpo\.init starts a divlab GPT; with a Hugging Face student set dpo\.init=null"),
        (["dpo.init=null"], r"data=preference_arith holds a divlab GPT's character tokens"),
    ],
)
def test_hf_student_on_arithmetic_preferences_fails_in_one_sentence(
    compose_cfg, outputs, tiny_llama_dir, extra, words
):
    hf = ["student=smollm2_135m", "student.model.source=local", f"+student.model.path={tiny_llama_dir}"]
    with pytest.raises(ConfigError, match=words):
        run(compose_cfg(*TINY, *hf, *extra))
    assert not (outputs / "dpo").exists()
