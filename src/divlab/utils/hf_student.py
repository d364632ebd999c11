"""A Hugging Face student on token data brings its own tokenizer (config-level, before hashing).

`divlab task=seqmatch student=smollm2_l3` should train SmolLM2's blocks on SmolLM2's tokens, with no more
keys than that. For the LM tasks on token data (lm, seqmatch, mix_lm), when `student.model` is a Hugging Face
model (divlab.models.hf.build_hf_lm) and the data names no tokenizer of its own, `follow_hf_student` sets
`data.datamodule.tokenizer` to the student's tokenizer behind divlab's Tokenizer interface
(divlab.data.hf_tokenizer.HFTokenizer, with "<bs>" added for lm and seqmatch), exactly as the
`*_smollm2` experiment files spell it; for mix_lm it also makes the task train the student
(`mix_lm.model: null`, `student` in `task.uses`) instead of its own small GPT. A tokenizer the config sets
is left alone, so the experiment files compose (and hash) as before.
"""

from omegaconf import DictConfig, OmegaConf, open_dict

from divlab.errors import ConfigError

HF_BUILDER = "divlab.models.hf.build_hf_lm"
PRETRAINED_BUILDER = (
    "divlab.provision.pretrained.build_pretrained_hf_lm"  # an HF student LM-pre-trained first
)
BACKSPACE = {"lm": True, "seqmatch": True, "mix_lm": False}  # token-data tasks: does the data add "<bs>"?


def follow_hf_student(cfg: DictConfig) -> DictConfig:
    """In place (module docstring); a config without an HF student on token data is returned unchanged."""
    task = OmegaConf.select(cfg, "task.name", default=None)
    student = OmegaConf.select(cfg, "student.model._target_", default=None, throw_on_missing=False)
    if task in BACKSPACE and student == PRETRAINED_BUILDER:
        raise ConfigError(
            f"student.model._target_={PRETRAINED_BUILDER} (student=smollm2_l3_pretrained) is a start for "
            f"task=lm_distill; task={task} trains its own start (e.g. student=smollm2_l3_random)"
        )
    if task not in BACKSPACE or student != HF_BUILDER or OmegaConf.select(cfg, "data.datamodule") is None:
        return cfg
    with open_dict(cfg):
        if task == "mix_lm":
            cfg.mix_lm.model = None
            if "student" not in (cfg.task.get("uses") or ()):
                cfg.task.uses = [*(cfg.task.get("uses") or ()), "student"]
        if cfg.data.datamodule.get("tokenizer") is None:
            cfg.data.datamodule.tokenizer = {
                "_target_": "divlab.data.hf_tokenizer.HFTokenizer",
                "backspace": BACKSPACE[task],
                "tokenizer": {
                    "_target_": "divlab.models.hf.load_tokenizer",
                    "_recursive_": False,
                    "model": "${student.model}",
                    "cache_dir": "${paths.model_dir}",
                },
            }
    return cfg
