"""kd_fashion: every cell composes; the OFA cell (stage heads on a grey-image zoo ResNet, teacher-logit cache)
runs on Fashion-MNIST-format files."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from divlab.runner import run
from divlab.tables.spec import load_table

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def test_every_kd_fashion_cell_composes(tmp_path, table_cells):
    spec = load_table("kd_fashion", CONF)
    digits = load_table("kd_digits", CONF)
    assert [r.name for r in spec.rows] == [r.name for r in digits.rows]  # the same methods as kd_digits
    for row, _column, cfg in table_cells(spec, tmp_path):
        OmegaConf.resolve(cfg)
        assert cfg.data.name == "fashion_mnist" and cfg.teacher.model.in_channels == 1
        assert cfg.student.model.get("in_channels") == 1
        assert cfg.task.name == ("classify" if row.name == "CE-only" else "distill")


def test_ofa_cell_runs_with_stage_heads_and_cached_teacher_logits(
    compose_cfg, tmp_path, teacher_dir, capsys, data_writer
):
    data_writer("write_fashion")(tmp_path / "fashion", n_train=60, n_test=20)
    cfg = compose_cfg(
        "experiment=kd/fashion",
        "divergence=ofa",
        "distill.stages=auto",
        f"data.datamodule.root={tmp_path / 'fashion'}",
        "data.datamodule.val_size=10",
        "data.datamodule.batch_size=16",
    )
    record = run(cfg)
    out = capsys.readouterr().out
    assert "stage heads on stage1, stage2" in out and "teacher logits computed once" in out
    metrics = record["metrics"]
    for key in ("train/stage_stage1", "train/stage_stage2", "train/kd", "test/acc"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    ckpt = torch.load(Path(record["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    heads = [k for k in ckpt["state_dict"] if k.startswith("stage_heads.")]
    assert heads and all(k.startswith(("model.", "stage_heads.")) for k in ckpt["state_dict"])
    assert len(list((teacher_dir / "logits").glob("*.pt"))) >= 1
