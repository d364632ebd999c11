"""data.datamodule.rejected=sampled of task=dpo: the start model's own wrong answers, sampled once and cached;
prompts without a wrong sample keep the perturbed answer and are counted; the end-to-end run logs the held-out
generation metrics of divlab.tasks.dpo_eval."""

import json
import logging
import math

import pytest

from divlab.errors import ConfigError
from divlab.provision import rejected as rej
from divlab.runner import run

pytest.importorskip("transformers")

TINY = [
    "data.datamodule.n_train=6",
    "data.datamodule.n_val=2",
    "data.datamodule.n_test=4",
    "data.datamodule.batch_size=2",
    "data.datamodule.max_prompt_tokens=48",
    "data.datamodule.max_response_tokens=12",
    "data.datamodule.rejected=sampled",
    "data.datamodule.rejected_samples=2",
]


@pytest.fixture
def tiny_sampled(tiny_llama_dir):
    return ["task=dpo", "student.model.source=local", f"+student.model.path={tiny_llama_dir}", *TINY]


def test_is_wrong():
    assert rej.is_wrong("Tom has 18 apples.", "19") and not rej.is_wrong("Tom has 19 apples.", "19")
    assert not rej.is_wrong("Tom has apples.", "19")  # no integer: not a plausible answer
    assert rej.is_wrong("5 minus 2 is -3", "3")


def test_cache_written_once_and_fallback_counted(compose_cfg, tiny_sampled, outputs, monkeypatch, caplog):
    from hydra.utils import instantiate

    calls = []

    def fake(model, prompts, answers, **kwargs):  # a wrong answer for even prompts, none for odd ones
        calls.append(len(prompts))
        return [f"It is {int(a) + 7}." if i % 2 == 0 else None for i, a in enumerate(answers)]

    monkeypatch.setattr(rej, "sample_wrong_answers", fake)
    cfg = compose_cfg(*tiny_sampled)
    dm = instantiate(cfg.data.datamodule)
    perturbed = [e["rejected"] for e in dm.examples("train")]
    with caplog.at_level(logging.WARNING, logger="divlab.provision.rejected"):
        shares = rej.use_sampled_rejected(cfg, model=None, datamodule=dm)
    assert calls == [6, 2, 4]  # train, val, test sampled once each
    assert shares == {"train": 50.0, "val": 50.0, "test": 50.0}
    assert "3 of 6 train prompts had no wrong answer" in caplog.text
    train = dm.examples("train")
    for i, e in enumerate(train):
        assert e["rejected"] == (f"It is {int(e['answer']) + 7}." if i % 2 == 0 else perturbed[i])
        assert dm.dataset("train").rows[i][2] == dm.response_ids(e["rejected"])
    files = sorted((outputs / "rejected").glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == ["test", "train", "val"]
    rows = [json.loads(line) for line in (outputs / "rejected").glob("train-*.jsonl").__next__().open()]
    assert [r["rejected"] is None for r in rows] == [i % 2 == 1 for i in range(6)]
    # a second build reads the cache: the sampler is not called again, the same answers come back
    dm2 = instantiate(cfg.data.datamodule)
    assert rej.use_sampled_rejected(cfg, model=None, datamodule=dm2) == shares
    assert calls == [6, 2, 4] and dm2.examples("train") == train
    # other sampling settings: another cache entry
    cfg3 = compose_cfg(*tiny_sampled, "data.datamodule.rejected_samples=3")
    rej.use_sampled_rejected(cfg3, model=None, datamodule=instantiate(cfg3.data.datamodule))
    assert calls == [6, 2, 4, 6, 2, 4]


def test_real_sampler_returns_wrong_answers_or_none(compose_cfg, tiny_sampled):
    from hydra.utils import instantiate

    from divlab.utils.checks import build

    cfg = compose_cfg(*tiny_sampled)
    model, dm = build(cfg.student.model), instantiate(cfg.data.datamodule)
    examples = dm.examples("val")
    prompts = [r[0] for r in dm.dataset("val").rows]
    found = rej.sample_wrong_answers(
        model, prompts, [e["answer"] for e in examples], n=3, temperature=1.0, max_new_tokens=6, seed=1
    )
    assert len(found) == 2 and all(f is None or rej.is_wrong(f, e["answer"]) for f, e in zip(found, examples))
    again = rej.sample_wrong_answers(
        model, prompts, [e["answer"] for e in examples], n=3, temperature=1.0, max_new_tokens=6, seed=1
    )
    assert again == found  # seeded


def test_bad_rejected_settings(compose_cfg, tiny_sampled, tmp_path):
    from divlab.utils.checks import build as instantiate

    with pytest.raises(ConfigError, match="data.datamodule.rejected must be one of perturbed, sampled"):
        instantiate(compose_cfg(*tiny_sampled, "data.datamodule.rejected=model").data.datamodule)
    with pytest.raises(ConfigError, match="rejected_samples must be an integer >= 1"):
        instantiate(compose_cfg(*tiny_sampled, "data.datamodule.rejected_samples=0").data.datamodule)
    path = tmp_path / "p.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{i}?", "chosen": f"{i}", "rejected": f"{i + 1}"}) + "\n" for i in range(9)
        )
    )
    with pytest.raises(ConfigError, match="rejected=sampled needs an integer 'answer' on every row"):
        instantiate(
            compose_cfg(
                *tiny_sampled, f"data.datamodule.source={path}", "data.datamodule.n_train=3"
            ).data.datamodule
        )


def test_end_to_end_sampled_rejected_logs_generation_metrics(compose_cfg, tiny_sampled, outputs):
    cfg = compose_cfg(*tiny_sampled, "callbacks=none", "dpo.samples=2", "dpo.generate_val=true")
    record = run(cfg)
    m = record["metrics"]
    for key in ("exact_match", "ece", "confidence", "distinct_1", "distinct_2", "entropy", "kl_seq"):
        assert math.isfinite(m[f"test/{key}"]) and math.isfinite(m[f"val/{key}"]), key
    assert 0 <= m["test/rejected_fallback"] <= 100
    assert 0 <= m["test/ece"] <= 100 and m["test/entropy"] > 0 and 0 < m["test/distinct_1"] <= 1
    assert len(list((outputs / "rejected").glob("*.jsonl"))) == 3
