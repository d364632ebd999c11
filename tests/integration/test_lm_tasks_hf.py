"""task=lm, task=seqmatch and task=mix_lm with a Hugging Face student (a tiny local random Llama standing in
for SmolLM2): the data carries the student's tokenizer (divlab.data.hf_tokenizer), <bs> is one new token and
the embedding grows by one row, and each task runs debug=fast and writes its metrics."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.models.gpt import GPT
from divlab.runner import run
from divlab.tasks.seqmatch_sampler import sample_by_recompute, sample_with_backspace

pytest.importorskip("transformers")


@pytest.fixture
def hf_student(tiny_llama_dir):
    """Overrides that put a 2-block random model of the tiny local Llama where the experiments have SmolLM2."""
    return [
        "student=smollm2_l3_random",
        "student.model.base.source=local",
        f"+student.model.base.path={tiny_llama_dir}",
        "student.model.overrides.num_hidden_layers=2",
        "callbacks=none",
    ]


def finite(metrics: dict, *keys: str) -> None:
    for key in keys:
        assert key in metrics and metrics[key] == metrics[key], key  # present and not nan


def test_bs_is_one_new_token_and_the_embedding_grows_by_one_row(tiny_llama_dir):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from divlab.data.hf_tokenizer import HFTokenizer
    from divlab.models.hf import build_hf_lm
    from divlab.tasks.lm import build_hf_student

    before = len(AutoTokenizer.from_pretrained(tiny_llama_dir))
    tok = HFTokenizer(tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert tok.bs_id == before and tok.vocab_size == before + 1
    ids = tok.encode("12+7=19", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.bs_id not in ids
    assert tok.decode([*tok.encode("ab"), tok.bs_id], apply_backspace=True) == tok.decode(
        tok.encode("ab")[:-1]
    )
    spec = {"_target_": "divlab.models.hf.build_hf_lm", "source": "local", "path": str(tiny_llama_dir)}
    rows = build_hf_lm(**{k: v for k, v in spec.items() if k != "_target_"}).vocab_size
    model = build_hf_student(OmegaConf.create(spec), tokenizer=tok)
    assert rows == before and model.vocab_size == rows + 1
    assert model.hf.get_input_embeddings().weight.shape[0] == rows + 1
    assert model(torch.tensor([[tok.bos_id, tok.bs_id]])).shape[-1] == rows + 1
    # a tokenizer whose pad is its eos (SmolLM2's) pads with its unk token: still one new row, for <bs>
    same = AutoTokenizer.from_pretrained(tiny_llama_dir)
    same.pad_token = same.eos_token
    tok2 = HFTokenizer(tokenizer=same)
    assert tok2.pad_id == same.unk_token_id != tok2.eos_id and tok2.vocab_size == before + 1


@pytest.mark.parametrize("bs_state", ["conditioned", "popped"])
def test_recompute_sampler_matches_the_kv_cache_sampler(bs_state):
    torch.manual_seed(0)
    gpt = GPT(vocab_size=12, n_layer=1, n_head=2, d_model=16, context_length=32, positions="rotary").eval()
    inputs = torch.tensor([[8, 1, 2, 3], [8, 4, 5, 11]])
    lens, prompt = torch.tensor([4, 3]), torch.tensor([2, 2])
    common = dict(
        input_len=lens,
        prompt_len=prompt,
        max_steps=10,
        bs_id=9,
        eos_id=10,
        pad_id=11,
        never=(11,),
        temperature=1.0,
        bs_state=bs_state,
    )
    kv = sample_with_backspace(gpt, inputs, **common, generator=torch.Generator().manual_seed(3))
    plain = sample_by_recompute(
        lambda ids, attention_mask: gpt(ids), inputs, **common, generator=torch.Generator().manual_seed(3)
    )
    assert int(kv.n_backspace.sum()) > 0 and int(kv.n_backspace.sum()) < int(kv.n_actions.sum())
    assert kv.states == plain.states and torch.equal(kv.tokens, plain.tokens)
    assert torch.equal(kv.n_backspace, plain.n_backspace) and torch.equal(kv.ended, plain.ended)


def test_lm_runs_with_an_hf_student(compose_cfg, hf_student):
    m = run(compose_cfg("experiment=lm/arith_smollm2", *hf_student))["metrics"]
    finite(m, "val/loss", "test/loss", "test/ppl", "test/acc_clean", "test/acc_ood", "test/bs_rate")
    assert 0 <= m["test/acc_clean"] <= 1


def test_seqmatch_runs_with_an_hf_student(compose_cfg, hf_student):
    m = run(compose_cfg("experiment=seqmatch/arith_smollm2", *hf_student, "seqmatch.bc_epochs=0"))["metrics"]
    finite(m, "train/sm", "train/bs_rate", "val/loss", "test/loss", "test/acc_clean", "test/bs_rate_ood")
    assert 0 <= m["train/bs_rate"] <= 1


def test_seqmatch_init_auto_with_an_hf_student_fails_in_one_sentence(compose_cfg, hf_student):
    with pytest.raises(ConfigError, match="seqmatch.init"):
        run(compose_cfg("experiment=seqmatch/arith_smollm2", *hf_student, "seqmatch.init=auto"))


def test_mix_lm_runs_with_an_hf_student(compose_cfg, hf_student):
    m = run(
        compose_cfg(
            "experiment=mixing/smollm2",
            *hf_student,
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "mixer.update_every=3",
            "mixer.lp_steps=1",
        )
    )["metrics"]
    finite(m, "val/avg_ppl", "test/avg_ppl", "test/ppl/shakespeare", "test/ppl/python_code")


@pytest.mark.parametrize("task,backspace", [("lm", True), ("seqmatch", True), ("mix_lm", False)])
def test_an_hf_student_brings_its_tokenizer_to_token_data(compose_cfg, task, backspace):
    """`divlab task=<lm task> student=smollm2_*` needs no other key (divlab.utils.hf_student)."""
    from omegaconf import OmegaConf

    from divlab.utils.hashing import prune_unused

    cfg = prune_unused(compose_cfg(f"task={task}", "student=smollm2_l3"))
    tok = cfg.data.datamodule.tokenizer
    assert tok._target_ == "divlab.data.hf_tokenizer.HFTokenizer" and tok.backspace is backspace
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["datamodule"]["tokenizer"]["tokenizer"]["model"] == resolved["student"]["model"]
    if task == "mix_lm":
        assert cfg.mix_lm.model is None and "student" in cfg.task.uses
    plain = prune_unused(compose_cfg(f"task={task}"))  # a divlab GPT keeps the data's own tokenizer
    assert plain.data.datamodule.get("tokenizer") is None
    assert task != "mix_lm" or (plain.mix_lm.model is not None and plain.student is None)


@pytest.mark.parametrize("experiment", ["lm/arith_smollm2", "seqmatch/arith_smollm2", "mixing/smollm2"])
def test_experiment_files_that_set_the_tokenizer_are_left_alone(compose_cfg, experiment):
    from omegaconf import OmegaConf

    from divlab.utils.hf_student import follow_hf_student

    cfg = compose_cfg(f"experiment={experiment}")
    before = OmegaConf.to_yaml(cfg)
    assert OmegaConf.to_yaml(follow_hf_student(cfg)) == before


@pytest.mark.parametrize("task", ["seqmatch", "mix_lm"])
def test_the_plain_task_runs_with_an_hf_student(compose_cfg, hf_student, task):
    """`divlab task=seqmatch|mix_lm student=...` with debug=fast, no experiment file (tiny Llama for SmolLM2)."""
    m = run(compose_cfg(f"task={task}", *hf_student))["metrics"]
    finite(m, *(("test/loss", "test/acc_clean") if task == "seqmatch" else ("val/avg_ppl", "test/avg_ppl")))


def test_recompute_sampler_projects_only_the_last_positions(tiny_llama_dir):
    from divlab.models.hf import build_hf_lm
    from divlab.tasks.seqmatch_sampler import last_logits

    model = build_hf_lm(source="local", path=str(tiny_llama_dir)).eval()
    ids = torch.randint(3, 100, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    with torch.no_grad():
        fast = last_logits(model, ids, mask, lengths)
        full = model(ids, attention_mask=mask)[torch.arange(3), lengths - 1].float()
    assert fast.shape == (3, model.vocab_size) and torch.allclose(fast, full, atol=1e-5)
