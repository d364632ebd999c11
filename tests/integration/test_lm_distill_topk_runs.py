"""task=lm_distill with lm_distill.teacher_outputs=topk on tiny random HF models: the teacher's top-k cache is
written once (sharded safetensors, compact dtypes), later runs memory-map it and never build the teacher,
k = V reproduces the exact (cached hidden states) run, and what cannot work without a teacher fails early."""

import json
import pickle

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run

pytest.importorskip("transformers")

TOPK = ["lm_distill.teacher_outputs=topk"]
DATA = ["lm_distill.responses=data"]  # the data's responses: more tokens than the tiny teacher's greedy ones


def cache_dirs(outputs):
    return sorted(p for p in (outputs / "teacher_topk").iterdir() if p.is_dir())


def stamps(outputs):
    return [f.stat().st_mtime_ns for d in cache_dirs(outputs) for f in sorted(d.iterdir())]


def test_cache_is_written_once_and_later_runs_never_build_the_teacher(
    compose_cfg, tiny_lmkd, outputs, monkeypatch
):
    from safetensors import safe_open

    from divlab.provision import teacher, teacher_topk
    from divlab.tasks import lm_distill

    monkeypatch.setattr(teacher_topk, "SHARD_TOKENS", 40)  # several shards of whole examples
    first = run(compose_cfg(*tiny_lmkd, *TOPK, *DATA, "lm_distill.topk=8"))["metrics"]
    dirs = cache_dirs(outputs)
    assert [d.name.split("-")[0] for d in dirs] == ["train", "val"]
    index = json.loads((dirs[0] / "index.json").read_text())
    assert index["k"] == 8 and index["bytes_per_token"] == 8 * (2 + 2) + 2 and len(index["shards"]) > 1
    with safe_open(str(dirs[0] / index["shards"][0]), framework="pt") as f:
        assert f.get_tensor("ids").dtype == torch.uint16 and f.get_tensor("ids").shape[1] == 8
        assert (
            f.get_tensor("log_probs").dtype == torch.float16 and f.get_tensor("tail").dtype == torch.float16
        )
    written = stamps(outputs)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built although its top-k cache exists")

    monkeypatch.setattr(teacher, "provision_teacher", no_teacher)
    seen = {}
    original = lm_distill.LMDistillTask.on_fit_start

    def remember(self):
        seen["task"] = self
        original(self)

    monkeypatch.setattr(lm_distill.LMDistillTask, "on_fit_start", remember)
    served = []
    original_topk = lm_distill.LMDistillTask.cached_teacher_topk

    def spy(self, batch, split, n):
        out = original_topk(self, batch, split, n)
        served.append((split, out is not None))
        return out

    monkeypatch.setattr(lm_distill.LMDistillTask, "cached_teacher_topk", spy)
    # another run directory (generation batch size only), the same training: the same numbers, from the cache
    second = run(compose_cfg(*tiny_lmkd, *TOPK, *DATA, "lm_distill.topk=8", "lm_distill.eval_batch_size=4"))
    second = second["metrics"]
    task = seen["task"]
    assert task.teacher is None and not task._frozen.get("teacher")
    assert {s for s, _ in served} == {"train", "val"} and all(hit for _, hit in served)
    for key in ("train/kd", "val/kd", "val/loss", "test/nll"):
        assert second[key] == pytest.approx(first[key], rel=1e-6), key
    assert "test/teacher_nll" not in second and "test/rougeL_teacher" in second
    assert stamps(outputs) == written
    cache = task.teacher_topk["train"]  # memory-mapped handles are dropped when pickled (spawned ranks)
    again = pickle.loads(pickle.dumps(cache))
    for a, b in zip(cache.rows([3, 0, 15]), again.rows([3, 0, 15])):
        assert torch.equal(a, b)


def test_k_equal_to_the_vocabulary_matches_the_exact_cached_run(compose_cfg, tiny_lmkd):
    exact = run(compose_cfg(*tiny_lmkd, "lm_distill.teacher_outputs=cached"))["metrics"]
    full = run(compose_cfg(*tiny_lmkd, *TOPK, "lm_distill.topk=100000"))["metrics"]  # capped at V
    for key in ("train/kd", "val/kd", "val/loss"):
        assert full[key] == pytest.approx(exact[key], rel=5e-3), key  # float16 log-probabilities


@pytest.mark.parametrize(
    "override,words",
    [
        ("lm_distill.on_policy_fraction=0.5", "lm_distill.on_policy_fraction"),
        ("lm_distill.topk=0", "lm_distill.topk"),
        ("divergence=dkd", "teacher_outputs=topk"),
    ],
)
def test_what_needs_a_teacher_fails_before_training(compose_cfg, tiny_lmkd, outputs, override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        run(compose_cfg(*tiny_lmkd, *TOPK, override))
    assert not (outputs / "lm_distill").exists()


def test_a_corrupt_cache_is_named(compose_cfg, tiny_lmkd, outputs):
    run(compose_cfg(*tiny_lmkd, *TOPK, "lm_distill.topk=4"))
    victim = cache_dirs(outputs)[0]
    (victim / "index.json").write_text("{")
    with pytest.raises(ConfigError, match=f"{victim.name}.*delete"):
        run(compose_cfg(*tiny_lmkd, *TOPK, "lm_distill.topk=4", "divergence=js"))
