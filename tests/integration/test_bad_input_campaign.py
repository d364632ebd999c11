"""The bad-input campaign of issue 15, rerun by class: every case ends in one sentence naming the key, file
or option to fix, before anything trains (Trainer.fit fails the test) and without making a run directory;
a temperature so large that the KD term is rounding noise warns (documented in conf/task/distill.yaml's
range and the README's "bad input" paragraph)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from divlab.errors import ConfigError
from divlab.runner import run, run_directory
from divlab.tables.spec import load_table
from divlab.utils.checks import check_config
from divlab.utils.hashing import prune_unused

CE, KD = "experiment=kd/digits_ce", "experiment=kd/digits"


def a_file(tmp: Path) -> str:
    (tmp / "a_file").write_text("not a folder")
    return str(tmp / "a_file")


def binary_text(tmp: Path) -> str:
    (tmp / "data.bin").write_bytes(bytes(range(256)) * 8)
    return str(tmp / "data.bin")


def latin1_text(tmp: Path) -> str:
    (tmp / "latin1.txt").write_bytes("caf\xe9 na\xefve d\xe9j\xe0 vu ".encode("latin-1") * 40)
    return str(tmp / "latin1.txt")


def teacher_ckpt(cfg, tmp: Path, *, wrong_shape: bool) -> Path:
    """A divlab teacher checkpoint of cfg.teacher.model, with its first tensor one row too long if asked."""
    state = instantiate(cfg.teacher.model).state_dict()
    if wrong_shape:
        first = next(iter(state))
        state[first] = torch.zeros(state[first].shape[0] + 1, *state[first].shape[1:])
    path = tmp / ("wrong.ckpt" if wrong_shape else "teacher.ckpt")
    torch.save({"divlab": {"format": 1, "kind": "teacher"}, "state_dict": state}, path)
    return path


def in_run_dir(name: str, make):
    """prepare(cfg, tmp): write `name` into the run directory of cfg, its content from make(cfg, tmp)."""

    def prepare(cfg, tmp):
        path = run_directory(cfg.copy()) / name
        path.parent.mkdir(parents=True)
        content = make(cfg, tmp)
        path.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())

    return prepare


# id: (overrides given tmp_path, expected sentence, prepare(cfg, tmp) or None)
CASES = {
    # 1. booleans are booleans: `rerun=no` is a string, and a truthy one
    "rerun=no": (lambda t: [CE, "rerun=no"], r"^rerun must be true or false, got 'no'$", None),
    "print_config=yes": (lambda t: [CE, "print_config=yes"], r"^print_config must be true or false", None),
    "compile=maybe": (lambda t: [CE, "compile=maybe"], r"^compile must be true or false", None),
    "t_squared=maybe": (
        lambda t: [KD, "distill.t_squared=maybe"],
        r"^distill\.t_squared must be true or false",
        None,
    ),
    # 3. settings that train nothing
    "lr=0": (lambda t: [CE, "optimizer.lr=0"], r"^optimizer\.lr must be a finite number > 0, got 0", None),
    "lr=-0.1": (lambda t: [CE, "optimizer.lr=-0.1"], r"^optimizer\.lr must be a finite number > 0", None),
    "lr=abc": (
        lambda t: [CE, "optimizer.lr=abc"],
        r"^optimizer\.lr must be a finite number > 0, got 'abc'",
        None,
    ),
    "both weights 0": (
        lambda t: [KD, "distill.ce_weight=0", "distill.kd_weight=0"],
        r"^distill\.ce_weight and distill\.kd_weight are both 0, so nothing is trained",
        None,
    ),
    "hidden width 0": (
        lambda t: [CE, "student=digits_mlp", "student.model.hidden=[0]"],
        r"^student\.model\.hidden\[0\] must be a positive integer",
        None,
    ),
    "temperature=inf": (
        lambda t: [KD, "distill.temperature=inf"],
        r"^distill\.temperature must be a number > 0 and "
        r"finite",
        None,
    ),
    # 4. keys and groups that would do nothing
    "typo in distill": (
        lambda t: [KD, "+distill.temprature=2"],
        r"^distill\.temprature is not a setting of "
        r"task=distill; its settings are .*temperature",
        None,
    ),
    "mixer on distill": (lambda t: [KD, "+mixer=aioli"], r"^mixer= is not read by task=distill", None),
    # 11. one sentence instead of a traceback
    "batch_size=0": (
        lambda t: [CE, "data.datamodule.batch_size=0"],
        r"^data\.datamodule\.batch_size must be an "
        r"integer >= 1, got 0$",
        None,
    ),
    "batch_size=-5": (
        lambda t: [CE, "data.datamodule.batch_size=-5"],
        r"^data\.datamodule\.batch_size",
        None,
    ),
    "batch_size=abc": (
        lambda t: [CE, "data.datamodule.batch_size=abc"],
        r"^data\.datamodule\.batch_size",
        None,
    ),
    "max_epochs=1.5": (
        lambda t: [CE, "trainer.max_epochs=1.5"],
        r"^trainer\.max_epochs must be a whole number",
        None,
    ),
    "max_epochs=0": (
        lambda t: [CE, "trainer.max_epochs=0"],
        r"^trainer\.max_epochs must be a number >= 1",
        None,
    ),
    "devices=abc": (
        lambda t: [CE, "trainer.devices=abc"],
        r"^trainer\.devices must be a number of devices",
        None,
    ),
    "seed=-1": (lambda t: [CE, "seed=-1"], r"^seed must be a non-negative integer", None),
    "output_root a file": (
        lambda t: [CE, f"paths.output_root={a_file(t)}/out"],
        r"^paths\.output_root=.*a_file/out is not a directory",
        None,
    ),
    "classify with a GPT": (
        lambda t: ["task=classify", "student=gpt_tiny"],
        r"^student\.model \(divlab\.models\.gpt\.GPT\) cannot be built from this config: .*"
        r"vocab_size.*; choose a student= option",
        None,
    ),
    "seqmatch on digits": (
        lambda t: ["experiment=seqmatch/arith", "data=digits"],
        r"^data\.datamodule \(divlab\.data\.digits\.DigitsDataModule\) cannot be built",
        None,
    ),
    "checkpoint is a directory": (
        lambda t: [KD, f"teacher.checkpoint={t}"],
        r"^teacher\.checkpoint=.* is a directory, not a checkpoint file",
        None,
    ),
    "teacher of other shapes": (
        lambda t: [KD, f"teacher.checkpoint={t}/wrong.ckpt"],
        r"^teacher\.checkpoint=.*wrong\.ckpt does not fit teacher\.model: tensor \S+ has "
        r"shape",
        lambda cfg, t: teacher_ckpt(cfg, t, wrong_shape=True),
    ),
    "CIFAR teacher on digits": (
        lambda t: ["task=distill", "data=digits", "teacher=resnet56", "student=digits_mlp"],
        r"^teacher\.model \(\w+\) takes 3-channel images but data=digits gives 1x8x8 images; choose a "
        r"teacher= option made for data=digits",
        None,
    ),
    "CIFAR student on digits": (
        lambda t: ["task=classify", "data=digits", "student=resnet20"],
        r"^student\.model \(\w+\) takes 3-channel images but data=digits gives 1x8x8 images",
        None,
    ),
}
# Cases whose run directory holds a broken file before the run (the directory exists by design).
IN_RUN_DIR = {
    "corrupt last.ckpt": (
        [CE],
        r"^\S+/checkpoints/last\.ckpt is not a divlab run checkpoint to resume from "
        r"\(corrupt, or a teacher's\); delete it, or set rerun=true",
        in_run_dir("checkpoints/last.ckpt", lambda cfg, t: b"\x00garbage"),
    ),
    "teacher checkpoint as last.ckpt": (
        [KD, "teacher.checkpoint=TMP/teacher.ckpt"],
        r"last\.ckpt is not a divlab run checkpoint",
        in_run_dir("checkpoints/last.ckpt", lambda cfg, t: teacher_ckpt(cfg, t, wrong_shape=False)),
    ),
    "corrupt metrics.json": (
        [CE],
        r"^\S+/metrics\.json is corrupt \(JSONDecodeError\); rerun=true trains",
        in_run_dir("metrics.json", lambda cfg, t: b'{"metrics": '),
    ),
}


@pytest.fixture
def no_training(monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("training started on bad input"))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_before_any_run_directory(
    compose_cfg, outputs, tmp_path, no_training, case
):
    make_overrides, message, prepare = CASES[case]
    cfg = compose_cfg(*make_overrides(tmp_path))
    if prepare:
        prepare(cfg, tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not [p for p in outputs.rglob("seed*") if p.is_dir()], "a half-made run directory was left"


@pytest.mark.parametrize("case", IN_RUN_DIR)
def test_broken_files_in_a_run_directory_are_named(compose_cfg, tmp_path, no_training, case):
    overrides, message, prepare = IN_RUN_DIR[case]
    cfg = compose_cfg(*(o.replace("TMP", str(tmp_path)) for o in overrides))
    prepare(cfg, tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        run(cfg)
    text = str(info.value)
    assert "\n" not in text and text.count(str(run_directory(cfg.copy()))) == 1  # the path is not repeated


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_accelerator_without_a_gpu(compose_cfg, no_training):
    with pytest.raises(
        ConfigError, match=r"^trainer\.accelerator=gpu but torch sees no CUDA GPU here; use trainer=cpu"
    ):
        run(compose_cfg(CE, "trainer.accelerator=gpu"))


def test_unwritable_output_root_is_named(compose_cfg, tmp_path, monkeypatch, no_training):
    """Tests run as root here, for whom chmod does not stop writes: the permission answer is faked."""
    import divlab.utils.strict as strict

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = strict.os.access
    monkeypatch.setattr(strict.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(
        ConfigError,
        match=r"^paths\.output_root=\S+/locked/out cannot be written \(\S+/locked is not writable\)",
    ):
        run(compose_cfg(CE, f"paths.output_root={locked}/out"))
    assert not (locked / "out").exists()


def test_huge_temperature_warns_that_the_kd_term_is_noise(compose_cfg):
    cfg = prune_unused(compose_cfg(KD, "distill.temperature=1e6"))
    with pytest.warns(UserWarning, match=r"distill\.temperature=1e\+06 > 100: .*rounding noise"):
        check_config(cfg)


def test_malformed_table_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("title: t\nrows:\n  a: [x\ncolumns: {b: []}\n")
    with pytest.raises(
        ConfigError, match=r"broken\.yaml is not valid YAML at line \d+, column \d+ \(.*\); fix that line"
    ):
        load_table(str(path), tmp_path)


def test_missing_table_file_is_not_doubled(tmp_path):
    (tmp_path / "table").mkdir()
    with pytest.raises(
        ConfigError, match=r"table=none\.yaml is not a table config \(no file none\.yaml\)"
    ) as info:
        load_table("none.yaml", tmp_path)
    assert ".yaml.yaml" not in str(info.value)


# 5. binary files as text data: the text is read when the data module is set up
@pytest.mark.parametrize(
    ("write", "message"),
    [
        (binary_text, r"^data\.datamodule\.path: .*data\.bin is a binary file \(it holds NUL bytes\)"),
        (latin1_text, r"^data\.datamodule\.path: .*latin1\.txt is not UTF-8 text \(\d+ of \d+ characters"),
    ],
    ids=["NUL bytes", "latin-1"],
)
def test_binary_file_as_text_data_names_the_file(compose_cfg, tmp_path, write, message):
    cfg = compose_cfg("task=lm", "data=shakespeare", "student=gpt_tiny", f"data.path={write(tmp_path)}")
    datamodule = instantiate(cfg.data.datamodule, seed=0)
    with pytest.raises(ConfigError, match=message):
        datamodule.setup("fit")
