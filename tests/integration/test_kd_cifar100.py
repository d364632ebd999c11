"""kd_cifar100: every cell composes to the published recipe; one cell runs one epoch on CIFAR-format files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from divlab.tables.spec import load_table

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# DKD's beta per pair: mdistiller configs/cifar100/dkd/*.yaml (8 where the file leaves the default)
DKD_BETA = {
    "resnet32x4 -> resnet8x4": 8.0,
    "resnet56 -> resnet20": 2.0,
    "wrn_40_2 -> wrn_16_2": 6.0,
    "wrn_40_2 -> wrn_40_1": 6.0,
    "resnet110 -> resnet32": 2.0,
    "vgg13 -> vgg8": 6.0,
}


def test_every_kd_cifar100_cell_composes_to_the_recipe(tmp_path, table_cells):
    spec = load_table("kd_cifar100", CONF)
    assert [c.name for c in spec.columns] == list(DKD_BETA)
    for row, column, cfg in table_cells(spec, tmp_path):
        teacher, student = column.name.split(" -> ")
        assert cfg.teacher.model.name == teacher and cfg.student.model.name == student
        assert cfg.data.name == "cifar100" and cfg.data.datamodule.batch_size == 64
        assert cfg.trainer.max_epochs == 240
        OmegaConf.resolve(cfg)
        if row.kind == "teacher":
            continue
        where = f"{row.name} | {column.name}"
        if row.name == "PLD (AdamW)":
            assert cfg.optimizer._target_ == "torch.optim.AdamW", where
        else:
            assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.05, where
            assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 5e-4), where
            assert list(cfg.scheduler.milestones) == [150, 180, 210] and cfg.scheduler.gamma == 0.1
        assert cfg.task.name == ("classify" if row.name.startswith("student") else "distill"), where
        if row.name == "DKD":
            assert cfg.divergence.name == "dkd" and cfg.divergence.beta == DKD_BETA[column.name], where
            assert (cfg.divergence.alpha, cfg.divergence.temperature) == (1.0, 4.0)
            assert cfg.distill.warmup_epochs == 20
        if row.name == "KD":
            assert (cfg.distill.temperature, cfg.distill.ce_weight, cfg.distill.kd_weight) == (4.0, 0.1, 0.9)
        if row.name == "OFA-KD":
            assert cfg.divergence.name == "ofa" and cfg.distill.stages == "auto"
    assert spec.reference[("DKD", "resnet32x4 -> resnet8x4")] == 76.32
    assert spec.reference[("teacher", "vgg13 -> vgg8")] == 74.64


@pytest.mark.slow
def test_one_kd_cifar100_cell_runs_one_epoch_on_cifar_format_files(tmp_path, data_writer):
    """reproduce.py on the (teacher, DKD) x (resnet56 -> resnet20) corner of kd_cifar100, one tiny epoch."""
    data_writer("write_cifar")(tmp_path / "data", 100)
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "table" / "kd_cifar100.yaml"))
    column = "resnet56 -> resnet20"
    raw["columns"] = [c for c in raw["columns"] if c["name"] == column]
    raw["rows"] = [r for r in raw["rows"] if r["name"] in ("teacher", "DKD")]
    raw["cell_overrides"] = {"DKD": {column: raw["cell_overrides"]["DKD"][column]}}
    raw["reference"] = {r: {column: raw["reference"][r][column]} for r in ("teacher", "DKD")}
    raw.pop("baseline_row")
    table = tmp_path / "kd_cifar100_corner.yaml"
    OmegaConf.save(OmegaConf.create(raw), table)
    out = tmp_path / "outputs"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce.py"),
        f"table={table}",
        f"paths.output_root={out}",
        f"data.datamodule.root={tmp_path / 'data'}",
        "data.datamodule.check_integrity=false",
        "data.datamodule.num_workers=0",
        "debug=fast",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = list(out.glob("distill/kd_cifar100/resnet56_resnet20/dkd/*/seed0/metrics.json"))
    assert len(records) == 1, proc.stdout
    record = json.loads(records[0].read_text())
    assert record["epochs"] == 1 and 0.0 <= record["metrics"]["test/acc"] <= 1.0
    log = next((out / "tables" / "kd_cifar100_corner_logs").glob("DKD*.log")).read_text()
    assert log.count("teacher-logit cache off: data=cifar100 augments") == 1
    markdown = (out / "tables" / "kd_cifar100_corner.md").read_text()
    assert "71.97" in markdown and "72.34" in markdown  # published DKD and teacher values beside ours
