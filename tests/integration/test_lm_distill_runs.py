"""task=lm_distill end to end on tiny random HF models (a 4-block Llama teacher, a 2-block student from its
layers) and the embedded instruction set: off-policy, on-policy, SFT, the teacher-response cache, bad input."""

import json
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run

pytest.importorskip("transformers")


def responses_files(outputs: Path) -> list[Path]:
    return sorted((outputs / "responses").glob("*.jsonl"))


def test_off_policy_forward_kl_runs_and_reuses_teacher_responses(compose_cfg, tiny_lmkd, outputs):
    record = run(compose_cfg(*tiny_lmkd))
    m = record["metrics"]
    for key in (
        "test/rougeL",
        "test/rougeL_teacher",
        "test/teacher_nll",
        "test/nll_teacher_resp",
        "test/nll",
        "train/kd",
        "train/tokens_per_s",
        "val/loss",
    ):
        assert key in m and m[key] == m[key], key  # present and not nan
    assert 0 <= m["test/rougeL"] <= 100 and m["train/kd"] > 0
    files = responses_files(outputs)
    assert [f.name.split("-")[0] for f in files] == ["test", "train", "val"]
    rows = [json.loads(line) for line in files[1].read_text().splitlines()]
    assert len(rows) == 16 and {"index", "prompt", "response"} <= set(rows[0])
    stamps = [f.stat().st_mtime_ns for f in files]
    out = Path(record["run_dir"]) / "responses.jsonl"
    assert len(out.read_text().splitlines()) == 8
    # another divergence: a new run, the same cached teacher responses (not regenerated)
    record2 = run(compose_cfg(*tiny_lmkd, "divergence=reverse_kl"))
    assert record2["run_dir"] != record["run_dir"]
    assert [f.stat().st_mtime_ns for f in responses_files(outputs)] == stamps


def test_on_policy_and_sft_rows(compose_cfg, tiny_lmkd, monkeypatch):
    from divlab.tasks import lm_distill

    sampled = []
    original = lm_distill.LMDistillTask.student_samples

    def spy(self, batch):
        out = original(self, batch)
        sampled.append((batch["prompt_len"].tolist(), out["prompt_len"].tolist()))
        return out

    monkeypatch.setattr(lm_distill.LMDistillTask, "student_samples", spy)
    record = run(compose_cfg(*tiny_lmkd, "experiment=lmkd/smol_gkd", "lm_distill.on_policy_fraction=1.0"))
    assert sampled and all(
        a == b for a, b in sampled
    )  # the prompts are kept, the responses are the student's
    assert record["metrics"]["train/on_policy"] == 1.0
    sft = run(compose_cfg(*tiny_lmkd, "experiment=lmkd/smol_sft"))
    assert sft["metrics"]["train/kd"] == 0 and sft["metrics"]["train/ce"] > 0


def test_student_is_trained_and_teacher_is_not(compose_cfg, tiny_lmkd, monkeypatch):
    from divlab.tasks import lm_distill

    seen = {}
    original = lm_distill.LMDistillTask.on_fit_start

    def remember(self):
        seen["task"] = self
        seen["student"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        seen["teacher"] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
        original(self)

    monkeypatch.setattr(lm_distill.LMDistillTask, "on_fit_start", remember)
    run(compose_cfg(*tiny_lmkd))
    task = seen["task"]
    assert any(not torch.equal(v, task.model.state_dict()[k]) for k, v in seen["student"].items())
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in seen["teacher"].items())
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert not any(k.startswith("teacher") for k in task.state_dict())


@pytest.mark.parametrize(
    "override,words",
    [
        ("lm_distill.on_policy_fraction=1.5", "lm_distill.on_policy_fraction"),
        ("lm_distill.temperature=0", "lm_distill.temperature"),
        ("lm_distill.kd_weight=0", "both 0"),
        ("lm_distill.responses=maybe", "lm_distill.responses"),
        ("lm_distill.teacher_outputs=maybe", "lm_distill.teacher_outputs"),
        ("divergence=mmd", "divergence=mmd"),
    ],
)
def test_bad_settings_fail_before_training(compose_cfg, tiny_lmkd, outputs, override, words):
    extra = ["lm_distill.ce_weight=0"] if "kd_weight" in override else []
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        run(compose_cfg(*tiny_lmkd, *extra, override))
    assert not (outputs / "lm_distill").exists()


def test_mismatched_tokenizers_fail_naming_both(compose_cfg, tiny_lmkd, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_hf

    other = write_tiny_hf(tmp_path / "other", arch="gpt2", layers=2)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra_token>"])  # one more token: a different vocabulary
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="teacher.model.*student.model|student.model.*teacher.model"):
        run(
            compose_cfg(
                *tiny_lmkd,
                "student=smollm2_l3_random",
                "student.model.base.source=local",
                f"++student.model.base.path={other}",
                "student.model.overrides.num_hidden_layers=2",
            )
        )


def test_reference_row_evaluates_without_training(compose_cfg, tiny_lmkd):
    """task.fit=false (the table's teacher and untrained-student rows): test metrics, no training."""
    record = run(compose_cfg(*tiny_lmkd, "task.fit=false"))
    m = record["metrics"]
    assert "test/rougeL" in m and "test/teacher_nll" in m and not any(k.startswith("train/") for k in m)
    assert record["global_step"] == 0


def test_cached_teacher_states_equal_the_online_teacher(compose_cfg, tiny_lmkd, outputs, monkeypatch):
    """teacher_outputs=cached: the teacher's pass over the fixed rows runs once per (teacher, rows), every
    data batch of training and validation reads it, and the run equals teacher_outputs=online."""
    from divlab.tasks import lm_distill

    served = []
    original = lm_distill.LMDistillTask.cached_teacher_hidden

    def spy(self, batch, split, n):
        out = original(self, batch, split, n)
        served.append((split, out is not None))
        return out

    monkeypatch.setattr(lm_distill.LMDistillTask, "cached_teacher_hidden", spy)
    online = run(compose_cfg(*tiny_lmkd, "lm_distill.teacher_outputs=online"))["metrics"]
    assert not any(hit for _, hit in served)
    served.clear()
    cached = run(compose_cfg(*tiny_lmkd, "lm_distill.teacher_outputs=cached"))["metrics"]
    assert {split for split, _ in served} == {"train", "val"} and all(hit for _, hit in served)
    for key in ("train/kd", "val/kd", "val/loss", "test/nll", "test/teacher_nll"):
        assert cached[key] == pytest.approx(online[key], rel=1e-4, abs=1e-6), key
    files = sorted((outputs / "teacher_states").glob("*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["train", "val"]
    stamps = [f.stat().st_mtime_ns for f in files]
    run(compose_cfg(*tiny_lmkd, "divergence=js"))  # another row: the same cache, not recomputed
    assert [
        f.stat().st_mtime_ns for f in sorted((outputs / "teacher_states").glob("*.safetensors"))
    ] == stamps


def test_on_policy_batches_use_the_live_teacher(compose_cfg, tiny_lmkd, monkeypatch):
    from divlab.tasks import lm_distill

    served = []
    original = lm_distill.LMDistillTask.cached_teacher_hidden

    def spy(self, batch, split, n):
        out = original(self, batch, split, n)
        if split == "train":
            served.append(out is not None)
        return out

    monkeypatch.setattr(lm_distill.LMDistillTask, "cached_teacher_hidden", spy)
    record = run(compose_cfg(*tiny_lmkd, "experiment=lmkd/smol_gkd", "lm_distill.on_policy_fraction=1.0"))
    assert record["metrics"]["train/on_policy"] == 1.0 and served and not any(served)


def test_a_corrupt_teacher_state_cache_is_named(compose_cfg, tiny_lmkd, outputs):
    run(compose_cfg(*tiny_lmkd))
    victim = sorted((outputs / "teacher_states").glob("train-*.safetensors"))[0]
    victim.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=f"{victim.name}.*delete"):
        run(compose_cfg(*tiny_lmkd, "divergence=js"))
