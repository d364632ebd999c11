"""trainer=fsdp and trainer=ddp_gpu (divlab.models.hf.sharding) on this CPU machine: the presets compose, the
transformer block class comes from the model, and every misconfiguration fails in one sentence naming its key.
The sharded run itself needs GPUs (scripts/gpu_lm_distill.py; tests/integration/test_gpu_presets.py)."""

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")

from divlab.errors import ConfigError  # noqa: E402
from divlab.models.hf import build_hf_lm  # noqa: E402
from divlab.models.hf.sharding import ShardedHFStrategy, block_classes, check_fsdp  # noqa: E402

LMKD = ("experiment=lmkd/smol_fkl", "trainer=fsdp")


def local(directory, **kwargs):
    return build_hf_lm(source="local", path=str(directory), **kwargs)


def one_sentence(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and text.count("; ") <= 2
    return text


def test_fsdp_preset_composes_with_lm_distill(compose_cfg):
    cfg = compose_cfg(*LMKD)
    check_fsdp(cfg)  # the preset as shipped is valid for the lmkd recipes
    t = cfg.trainer
    assert t.strategy._target_ == "divlab.models.hf.sharding.ShardedHFStrategy"
    assert (t.accelerator, t.precision, t.strategy.checkpoint_blocks, t.strategy.shard_frozen) == (
        "gpu",
        "bf16-mixed",
        True,
        True,
    )
    spec = OmegaConf.to_container(t.strategy, resolve=True)
    strategy = ShardedHFStrategy(**{k: v for k, v in spec.items() if k != "_target_"})
    assert strategy.kwargs["use_orig_params"] and strategy.checkpoint_blocks and strategy.block_class is None


def test_ddp_gpu_preset(compose_cfg):
    t = compose_cfg("experiment=lmkd/smol_fkl", "trainer=ddp_gpu").trainer
    assert (t.accelerator, t.strategy, t.devices, t.sync_batchnorm) == ("gpu", "ddp", 2, False)


@pytest.mark.parametrize("trainer", ["trainer=fsdp", "trainer=ddp_gpu"])
def test_slurm_starts_one_task_per_device(compose_cfg, trainer):
    cfg = compose_cfg("experiment=lmkd/smol_fkl", trainer, "launcher=slurm", "trainer.devices=4", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 4
    assert launcher.nodes == cfg.trainer.num_nodes


@pytest.mark.parametrize(
    "overrides,words",
    [
        (("trainer.accelerator=cpu",), "trainer.accelerator=cpu"),
        (("experiment=kd/digits",), "student.model._target_"),
        (("teacher=digits_cnn",), "teacher.model._target_"),
        (("trainer.precision=64-true",), "trainer.precision=64-true"),
        (("compile=true",), "compile=false"),
        (("student.model.gradient_checkpointing=true",), "student.model.gradient_checkpointing"),
        (("student.model.compile=true",), "student.model.compile"),
        (("trainer.strategy.block_class=3",), "trainer.strategy.block_class"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_each_misconfiguration_names_its_key(compose_cfg, overrides, words):
    cfg = compose_cfg(*LMKD, *overrides)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")) as error:
        check_fsdp(cfg)
    one_sentence(error)


@pytest.mark.parametrize(
    ("arch", "block"), [("tiny_llama_dir", "LlamaDecoderLayer"), ("tiny_gpt2_dir", "GPT2Block")]
)
def test_block_class_comes_from_the_model(request, monkeypatch, arch, block):
    model = local(request.getfixturevalue(arch))
    layers = model.hf.base_model.layers if arch == "tiny_llama_dir" else model.hf.base_model.h
    assert block_classes(model, key="student.model") == {type(layers[0])}
    assert type(layers[0]).__name__ == block
    monkeypatch.setattr(type(model.hf), "_no_split_modules", None)  # a model transformers does not annotate
    assert block_classes(model, key="student.model") == {type(layers[0])}  # from its layer list


def test_block_class_that_cannot_be_derived_names_the_key(tiny_llama_dir, monkeypatch):
    model = local(tiny_llama_dir)
    monkeypatch.setattr(type(model.hf), "_no_split_modules", None)
    model.hf.base_model.layers = torch.nn.ModuleList()
    with pytest.raises(ConfigError, match=r"trainer\.strategy\.block_class") as error:
        block_classes(model, key="teacher.model")
    assert "teacher.model" in one_sentence(error)
    with pytest.raises(ConfigError, match=r"block_class=Nope is not a module class of student\.model"):
        block_classes(local(tiny_llama_dir), key="student.model", block_class="Nope")
    with pytest.raises(ConfigError, match=r"student\.model is Linear; use trainer=ddp_gpu"):
        block_classes(torch.nn.Linear(2, 2), key="student.model")


def test_strategy_checkpoints_the_student_blocks_and_shards_the_teacher(tiny_llama_dir, tiny_gpt2_dir):
    """The policy of a task: wrap units from both models, activation checkpointing on the student's only."""
    from divlab.tasks.base import DivlabTask

    task = DivlabTask()
    task.model = local(tiny_gpt2_dir)
    task.hold_frozen("teacher", local(tiny_llama_dir))
    task.hold_frozen("judge", None)
    blocks, student_blocks = ShardedHFStrategy().policy_of(task)
    assert {c.__name__ for c in blocks} == {"GPT2Block", "LlamaDecoderLayer"}
    assert student_blocks == {id(b) for b in task.model.hf.base_model.h}
    assert set(ShardedHFStrategy(shard_frozen=False).policy_of(task)[0]) == {
        type(task.model.hf.base_model.h[0])
    }
    task.model = torch.nn.Linear(2, 2)  # a task without a Hugging Face student
    with pytest.raises(ConfigError, match=r"student\.model is Linear"):
        ShardedHFStrategy().policy_of(task)


def test_strategy_refuses_a_cpu_trainer_and_a_wrap_policy():
    import lightning.pytorch as pl

    with pytest.raises(ConfigError, match=r"trainer=fsdp shards models over GPUs.*trainer=ddp_sim"):
        pl.Trainer(accelerator="cpu", devices=1, strategy=ShardedHFStrategy(), logger=False)
    with pytest.raises(ConfigError, match=r"trainer\.strategy\.block_class"):
        ShardedHFStrategy(auto_wrap_policy={torch.nn.Linear})


def test_the_runner_checks_fsdp_before_building_anything(compose_cfg, tmp_path):
    from divlab.runner import run

    cfg = compose_cfg("experiment=lmkd/smol_fkl", "trainer=fsdp", "trainer.accelerator=cpu")
    cfg.paths.output_root = str(tmp_path)
    with pytest.raises(ConfigError, match="trainer=fsdp"):
        run(cfg)
    assert not any(tmp_path.iterdir())
