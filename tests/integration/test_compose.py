"""Every option of every config group (every folder of conf/) composes and instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf, open_dict

from divlab.errors import ConfigError
from divlab.runner import build_callbacks
from divlab.utils.checks import build, check_config, missing_keys
from divlab.utils.hashing import prune_unused

CONF = Path(__file__).resolve().parents[2] / "conf"

# Folders of conf/ checked elsewhere in this file: the user's own (local, empty here), the table specs (not a
# group of train.yaml: scripts/reproduce.py reads them) and Hydra's settings (hydra=True below).
NOT_GROUPS = ("local", "table", "hydra")
GROUPS = tuple(sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_GROUPS))
HYDRA_PARTS = ("hparams_search", "launcher")  # groups that set hydra.* (composed with the Hydra node)


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]

# The other options an option composes with when it belongs to another family than the default
# (digits KD): a GPT student needs token data and a language-model task, a CIFAR teacher CIFAR shapes...
LM = ("task=lm", "data=arith", "student=gpt_tiny")
DENOISE = ("task=denoise", "data=ring8", "student=edm_mlp2d")
ONE_STEP = ("task=one_step", "data=ring8", "student=edm_mlp2d", "teacher=edm_mlp2d")
DENOISE_DIGITS = ("task=denoise", "+data.sigma_data=1.0")  # data=digits has no sigma_data of its own
ONE_STEP_DIGITS = ("experiment=onestep/digits",)
CIFAR_ZOO = ("resnet", "wrn_", "vgg", "MobileNet", "Shuffle")
PARTNERS = {
    "task": {
        "lm": LM,
        "seqmatch": LM,
        "mix_lm": ("data=mixture",),
        "denoise": DENOISE,
        "one_step": ONE_STEP,
        "sample_teacher": ONE_STEP,
        "superpose": ("data=grid25", "teacher=edm_gmm_exact"),
    },
    "data": {
        "arith": LM,
        "shakespeare": ("task=lm", "student=gpt_small"),
        "mixture": ("task=mix_lm",),
        "ring8": DENOISE,
        "grid25": DENOISE,
        "moons": DENOISE,
        "swissroll": DENOISE,
    },
    "student": {"gpt_tiny": LM, "gpt_small": LM, "edm_mlp2d": DENOISE, "edm_unet_digits": DENOISE_DIGITS},
    "teacher": {
        "edm_mlp2d": ONE_STEP,
        "edm_gmm_exact": ONE_STEP,
        "edm_unet_digits": ONE_STEP_DIGITS,
        "edm_songunet_digits": ONE_STEP_DIGITS,
    },
    "experiment": {"lm/_shakespeare_common": ("task=lm",)},  # the shared part of lm/ and seqmatch/shakespeare
}
# Hugging Face options: composed and resolved here; building them loads SmolLM2-135M (tests/integration/
# test_hf_smollm2.py, slow) or, on tiny local models, tests/integration/test_lm_distill_runs.py.
HF = ("task=lm_distill",)
PARTNERS["data"]["instruct"] = HF
PARTNERS["data"]["preference"] = ("task=dpo",)
PARTNERS["data"]["preference_arith"] = (
    "task=dpo",
    "student=gpt_tiny",
)  # the GPT policy of experiment=dpo/arith
PARTNERS["data"].update({"fewshot_code": ("task=code_eval",), "humaneval": ("task=code_eval",)})
PARTNERS["trainer"] = {
    "fsdp": ("experiment=lmkd/smol_fkl",)
}  # shards HF models (tests/unit/test_sharding.py)
# EDM networks at paper scale: their weights are converted checkpoints (teacher.model.path), so they compose
# within their recipes, which check that the config resolves (tests/unit/test_edm_checkpoint.py loads weights).
EDM_CIFAR10 = ("experiment=onestep/cifar10/fdistill_js",)
PARTNERS["student"]["edm_cifar10"] = EDM_CIFAR10
PARTNERS["teacher"].update(
    {o: EDM_CIFAR10 for o in ("edm_cifar10_cond", "edm_cifar10_small", "edm_cifar10_uncond")}
)
PARTNERS["teacher"]["edm_imagenet64_cond"] = ("experiment=onestep/imagenet64/fdistill_js",)
PARTNERS["smoke"] = {o: EDM_CIFAR10 for o in options("smoke")}  # CPU smoke settings of the CIFAR-10 recipes
PARTNERS["smoke"]["onestep_imagenet64"] = PARTNERS["teacher"]["edm_imagenet64_cond"]  # ... and ImageNet-64's
for _group in ("student", "teacher"):
    PARTNERS[_group].update({o: HF for o in options(_group) if o.startswith("smollm2")})
GROUP_PARTNERS = {  # groups that exist only under a task or experiment that pulls them in
    "mixer": ("task=mix_lm", "data=mixture"),
    "judge": ("experiment=seqmatch/shakespeare",),
    "decode": ("task=code_eval",),
}


def partners(group: str, option: str) -> tuple[str, ...]:
    if group in GROUP_PARTNERS:
        return GROUP_PARTNERS[group]
    found = PARTNERS.get(group, {}).get(option)
    if found is not None:
        return tuple(o for o in found if not o.startswith(f"{group}="))
    if group in ("teacher", "student") and option.startswith(CIFAR_ZOO) and not option.startswith("fashion"):
        return ("data=cifar100",)
    return ()


def test_every_group_has_options():
    assert {"mixer", "judge", "task", "trainer", "debug"} <= set(GROUPS)
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


def test_every_table_spec_loads():
    from divlab.tables.spec import load_table

    names = options("table")
    assert names
    for name in names:
        assert load_table(name, CONF).rows, name


def test_hydra_settings_compose_with_callbacks_that_import(compose_cfg):
    cfg = compose_cfg(hydra=True)
    assert cfg.hydra.callbacks and all(get_class(c._target_) for c in cfg.hydra.callbacks.values())
    assert cfg.hydra.run.dir == "." and cfg.hydra.job.chdir is False


def instantiate_parts(cfg, tmp_path: Path) -> None:
    missing = missing_keys(cfg)
    if missing:  # e.g. data=image_folder needs data.datamodule.root: the run refuses, naming it
        with pytest.raises(ConfigError, match=rf"{missing[0]} must be set"):
            check_config(cfg)
        return
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    try:
        dm = build(cfg.data.datamodule, seed=cfg.seed)
        dm.setup("fit")
    except ConfigError as e:  # a data set that is not on this machine: one sentence naming the key
        assert "data." in str(e) and "\n" not in str(e)
        return
    if cfg.task.name not in ("classify", "distill"):
        build_other_task(cfg, dm)
        return
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape[1:]) == tuple(cfg.data.input_shape)
    student = instantiate(cfg.student.model)
    assert student(x).shape == (len(x), cfg.data.num_classes)
    if "teacher" in cfg.task.uses:
        teacher = instantiate(cfg.teacher.model)
        assert teacher(x).shape == (len(x), cfg.data.num_classes)
        assert cfg.teacher.checkpoint == "auto" or Path(cfg.teacher.checkpoint).suffix == ".ckpt"
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c]
    callbacks = build_callbacks(cfg)
    assert all(hasattr(c, "on_train_start") for c in callbacks)
    if cfg.trainer.accelerator == "cpu":
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    else:  # GPU presets: the same keys build a Trainer; here there is no GPU to take them
        assert not torch.cuda.is_available() or pytest.skip("a GPU is present")
        with pytest.raises(Exception, match="(?i)not available|gpu backend|CUDA"):
            instantiate(cfg.trainer, logger=False, callbacks=[])


def build_other_task(cfg, dm) -> None:
    """Tasks of the other families: their builder makes a LightningModule (a task that would train a
    teacher first is only checked to resolve), and the trainer of the config builds."""
    import lightning.pytorch as pl

    from divlab.runner import task_builder

    builder = task_builder(cfg)
    assert callable(builder)
    if cfg.get("seqmatch") and cfg.seqmatch.get("init") == "auto":  # would train its behaviour-cloning start
        assert isinstance(OmegaConf.to_container(cfg.seqmatch.init_train, resolve=True), dict)
        cfg.seqmatch.init = None
    if "teacher" in (cfg.task.uses or ()):
        assert isinstance(OmegaConf.to_container(cfg.teacher, resolve=True), dict)
    else:
        assert isinstance(builder(cfg, datamodule=dm), pl.LightningModule)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=build_callbacks(cfg))
    assert trainer is not None


# Cases whose build trains proxy models (up to two minutes each on the 2-core CI machine; every mixer also trains
# a tiny LM in tests/integration/test_mixing_runs.py): `make test-full` only.
SLOW_CASES = {
    ("mixer", "grid"),
    ("mixer", "dml"),
    ("mixer", "doremi"),
    ("mixer", "skillit"),
    ("experiment", "mixing/dml"),
    ("experiment", "mixing/grid"),
}


@pytest.mark.parametrize(
    ("group", "option"),
    [pytest.param(g, o, marks=pytest.mark.slow) if (g, o) in SLOW_CASES else (g, o) for g, o in CASES],
    ids=[f"{g}={o}" for g, o in CASES],
)
def test_option_composes_and_instantiates(compose_cfg, tmp_path, group, option):
    cfg = compose_cfg(*partners(group, option), f"{group}={option}", fast=False, hydra=group in HYDRA_PARTS)
    prune_unused(cfg)
    if group == "mixer":
        assert get_class(cfg.mixer._target_) is not None
    if group == "judge":
        assert get_class(cfg.judge.model._target_) is not None
    if group in HYDRA_PARTS:
        part = cfg.hydra.sweeper if group == "hparams_search" else cfg.hydra.launcher
        assert get_class(part._target_) is not None
        if group == "hparams_search":
            assert cfg.optimized_metric and set(part.params) <= {"distill.temperature", "distill.kd_weight"}
        with open_dict(cfg):
            del cfg.hydra
    if group == "divergence":
        d = instantiate(cfg.divergence)
        assert callable(d) and cfg.divergence.name == option
    if "divlab.models.hf" in str(OmegaConf.to_container(cfg)):  # would build SmolLM2: resolved only (see HF)
        from hydra.utils import get_method

        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert get_method(cfg.task.builder)
        if cfg.task.name == "lm_distill":
            assert resolved["data"]["datamodule"]["tokenizer"]["model"] == resolved["student"]["model"]
        return
    instantiate_parts(cfg, tmp_path)
