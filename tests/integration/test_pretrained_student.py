"""student=smollm2_l3_pretrained (divlab.provision.pretrained) on a tiny random Llama: the LM pre-training on
text is trained once, cached like a teacher and reused; its weights differ from the random start; a run of
task=lm_distill starts from them; bad `pretrain` settings fail in one sentence."""

import pytest
import torch
from omegaconf import OmegaConf

import divlab.provision.teacher as teacher_mod
from divlab.errors import ConfigError
from divlab.models.hf import build_hf_lm
from divlab.provision.pretrained import pretrain_view
from divlab.runner import run
from divlab.utils.checks import build

pytest.importorskip("transformers")

PRE = "student.model.pretrain"


@pytest.fixture
def tiny_pretrained(tiny_llama_dir):
    """lmkd/smol_fkl with the tiny local Llama as teacher and student base, and a 3-step pre-training on
    the first 4,000 characters of two offline corpora."""
    d = str(tiny_llama_dir)
    return [
        "experiment=lmkd/smol_fkl",
        "student=smollm2_l3_pretrained",
        "teacher.model.source=local",
        f"+teacher.model.path={d}",
        "student.model.base.source=local",
        f"+student.model.base.path={d}",
        "student.model.overrides.num_hidden_layers=2",
        f"{PRE}.data.datamodule.corpus=[python_docs,python_code]",
        f"{PRE}.data.datamodule.max_chars=4000",
        f"{PRE}.data.datamodule.block_size=16",
        f"{PRE}.data.datamodule.val_fraction=0.05",
        f"{PRE}.data.datamodule.test_fraction=0.05",
        f"{PRE}.data.datamodule.batch_size=4",
        f"{PRE}.limit_train_batches=3",
        "data.datamodule.n_train=8",
        "data.datamodule.n_val=4",
        "data.datamodule.n_test=4",
        "data.datamodule.batch_size=4",
        "data.datamodule.max_prompt_tokens=48",
        "data.datamodule.max_response_tokens=8",
        "lm_distill.eval_batch_size=4",
        "trainer.limit_val_batches=1",
        "callbacks=none",
    ]


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pretraining_is_cached_reused_and_moves_the_weights(
    compose_cfg, tiny_pretrained, teacher_dir, monkeypatch
):
    calls = []
    train = teacher_mod.train_teacher
    monkeypatch.setattr(teacher_mod, "train_teacher", lambda *a, **k: calls.append(1) or train(*a, **k))
    cfg = compose_cfg(*tiny_pretrained, f"{PRE}.seed=11")  # a seed no other test pre-trains with
    torch.manual_seed(5)
    first = build(cfg.student.model)
    after_first = torch.rand(3)
    assert len(calls) == 1 and first.training
    assert all(p.requires_grad for p in first.parameters())
    spec = OmegaConf.to_container(cfg.student.model, resolve=True)
    pretrain = spec.pop("pretrain")
    cached = teacher_mod.cached_teacher_path(pretrain_view(spec, pretrain, key="student.model"))
    assert cached.parent == teacher_dir and cached.is_file()
    stamp = cached.stat().st_mtime_ns

    torch.manual_seed(5)
    second = build(cfg.student.model)
    assert len(calls) == 1 and cached.stat().st_mtime_ns == stamp  # read from the cache, not trained again
    assert torch.equal(torch.rand(3), after_first)  # a pre-training leaves the run's random state alone
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    spec = {k: v for k, v in spec.items() if k not in ("_target_", "_recursive_")}
    torch.manual_seed(11)  # the pre-training's start: HF's init under pretrain.seed
    start = weights(build_hf_lm(**spec))
    assert start.keys() == a.keys()
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert len(moved) == len(a), f"unchanged by the pre-training: {sorted(set(a) - set(moved))}"


def test_lm_distill_starts_from_the_pretrained_student(compose_cfg, tiny_pretrained, monkeypatch):
    seen = {}
    provision = teacher_mod.provision_teacher

    def spy(view, model, **kw):
        out = provision(view, model, **kw)
        if kw.get("role") == "pre-trained student":
            seen["weights"] = weights(model)
        return out

    monkeypatch.setattr(teacher_mod, "provision_teacher", spy)
    record = run(compose_cfg(*tiny_pretrained, "task.fit=false"))
    assert seen and record["metrics"]["test/nll"] == record["metrics"]["test/nll"]  # ran, not nan
    cfg = compose_cfg(*tiny_pretrained)
    student = build(cfg.student.model)
    assert all(torch.equal(v, seen["weights"][k]) for k, v in weights(student).items())


@pytest.mark.parametrize(
    "override, words",
    [
        (f"+{PRE}.steps=5", f"{PRE}.steps is not a pre-training setting"),
        (f"{PRE}.max_epochs=0", f"{PRE}.max_epochs must be an integer >= 1"),
        (f"{PRE}.data=null", f"{PRE}.data is not set"),
        (f"{PRE}.checkpoint=pretrained", f"{PRE}.checkpoint=pretrained would skip the pre-training"),
        (f"{PRE}.checkpoint=/no/such.ckpt", f"{PRE}.checkpoint=/no/such.ckpt does not exist"),
    ],
)
def test_bad_pretrain_settings_fail_in_one_sentence(compose_cfg, tiny_pretrained, override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("+", r"\+")):
        build(compose_cfg(*tiny_pretrained, override).student.model)


def test_text_windows_read_a_list_of_corpora_in_order():
    from divlab.data.text_lm import read_text

    a, b = (read_text(corpus=n, path=None, max_chars=500) for n in ("python_docs", "python_code"))
    assert read_text(corpus=["python_docs", "python_code"], path=None, max_chars=500) == f"{a}\n\n{b}"
    with pytest.raises(ConfigError, match="data.datamodule.corpus must be a corpus name or a non-empty list"):
        read_text(corpus=[], path=None, max_chars=500)


@pytest.mark.parametrize("task", ["lm", "seqmatch", "mix_lm"])
def test_pretrained_student_is_refused_by_token_tasks_in_one_sentence(task):
    from omegaconf import OmegaConf

    from divlab.utils.hf_student import PRETRAINED_BUILDER, follow_hf_student

    cfg = OmegaConf.create(
        {
            "task": {"name": task},
            "student": {"model": {"_target_": PRETRAINED_BUILDER}},
            "data": {"datamodule": {}},
        }
    )
    with pytest.raises(ConfigError, match=f"task={task} trains its own start"):
        follow_hf_student(cfg)
