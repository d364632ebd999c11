"""task=lm_distill with a teacher whose tokenizer differs from the student's: token-level KD fails in one sentence
naming both models; sequence-level KD (the teacher's generated responses, CE only) runs, the teacher reading the
prompts in its own tokens."""

import sys
from pathlib import Path

import pytest

from divlab.errors import ConfigError
from divlab.runner import run

pytest.importorskip("transformers")


def write_other_vocab(path: Path) -> Path:
    """A tiny random Llama with a tokenizer trained on other text, whose special tokens have other ids than
    tests/conftest.py's tiny models (the same ChatML template)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import CHATML

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["A teacher that speaks another vocabulary entirely.", "Seven and twelve make nineteen."] * 20,
        trainers.BpeTrainer(
            vocab_size=290,
            special_tokens=["<|im_end|>", "<|im_start|>", "<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def other_teacher(tiny_llama_dir, tmp_path) -> list[str]:
    """tests/integration/test_lm_distill_runs.py's tiny_lmkd overrides with the other-vocabulary teacher."""
    d = str(tiny_llama_dir)
    return [
        "experiment=lmkd/smol_fkl",
        "teacher.model.source=local",
        f"+teacher.model.path={write_other_vocab(tmp_path / 'other')}",
        "student.model.base.source=local",
        f"+student.model.base.path={d}",
        "student.model.overrides.num_hidden_layers=2",
        "data.datamodule.n_train=8",
        "data.datamodule.n_val=4",
        "data.datamodule.n_test=4",
        "data.datamodule.batch_size=4",
        "data.datamodule.max_prompt_tokens=48",
        "data.datamodule.max_response_tokens=12",
        "lm_distill.eval_batch_size=4",
        "callbacks=none",
    ]


def test_token_level_kd_across_tokenizers_fails_naming_both(compose_cfg, other_teacher, outputs):
    with pytest.raises(
        ConfigError, match=r"teacher\.model .* and student\.model .* do not share a tokenizer"
    ):
        run(compose_cfg(*other_teacher))
    assert not (outputs / "lm_distill").exists()


def test_sequence_level_kd_across_tokenizers_runs(compose_cfg, other_teacher, monkeypatch):
    from divlab.models.hf import HFCausalLM

    prompts = []  # the teacher's prompts, decoded with its own tokenizer
    original = HFCausalLM.generate

    def spy(self, input_ids, attention_mask, **kwargs):
        if len(self.tokenizer) == 290:  # the teacher
            for ids, mask in zip(input_ids, attention_mask):
                prompts.append(self.tokenizer.decode(ids[mask.bool()].tolist()))
        return original(self, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(HFCausalLM, "generate", spy)
    sft_on_teacher = ("lm_distill.kd_weight=0", "lm_distill.ce_weight=1", "lm_distill.responses=teacher")
    m = run(compose_cfg(*other_teacher, *sft_on_teacher))["metrics"]
    assert len(prompts) == 8 + 4 + 4  # train, val and test prompts, generated once each
    assert all(p.endswith("<|im_end|>\n<|im_start|>assistant\n") for p in prompts)  # templated in its ids
    assert m["train/kd"] == 0 and 0 < m["train/ce"] < 1e3 and m["val/loss"] == m["val/loss"]
    assert "test/rougeL_teacher" in m and "test/nll_teacher_resp" in m
    assert "test/teacher_nll" not in m  # the teacher cannot score the student's token ids
