"""Hugging Face causal LMs as divlab teachers and students (needs the hf extra: pip install -e '.[hf]').

- `build_hf_lm(...)`: the `_target_` of conf/teacher/smollm2_135m.yaml and conf/student/smollm2_*.yaml.
- `load_tokenizer(model=spec)`: the tokenizer of a model spec (the data module's).
- `check_same_tokenizer(teacher, student)`: run before distillation.
- `HFCausalLM`: the wrapper divlab's LM tasks see.
"""

from divlab.models.hf.build import build_hf_lm, copy_teacher_layers, teacher_block_indices
from divlab.models.hf.lm import PROBE_TEXT, HFCausalLM, check_same_tokenizer
from divlab.models.hf.sources import cached_gguf_dir, load_tokenizer

__all__ = [
    "PROBE_TEXT",
    "HFCausalLM",
    "build_hf_lm",
    "cached_gguf_dir",
    "check_same_tokenizer",
    "copy_teacher_layers",
    "load_tokenizer",
    "teacher_block_indices",
]
