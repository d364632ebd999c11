"""HistoryCSVLogger (issue 15, item 6): a resumed run keeps the metrics.csv rows logged before its checkpoint,
drops the later ones (the resumed run logs them again), and widens the header when new columns appear; a fresh
run starts a new file."""

import csv

import torch

from divlab.utils.loggers import HistoryCSVLogger, checkpoint_position

OLD = [  # a run killed during epoch 2; last.ckpt is the end of epoch 1 (8 batches stepped)
    {"epoch": "0", "step": "3", "train/loss": "", "val/acc": "0.5"},
    {"epoch": "0", "step": "3", "train/loss": "2.0", "val/acc": ""},
    {"epoch": "1", "step": "5", "train/loss": "1.8", "val/acc": ""},
    {"epoch": "1", "step": "7", "train/loss": "", "val/acc": "0.6"},
    {"epoch": "1", "step": "7", "train/loss": "1.5", "val/acc": ""},
    {"epoch": "2", "step": "9", "train/loss": "1.4", "val/acc": ""},
]


def write_old(log_dir):
    log_dir.mkdir(parents=True)
    with open(log_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(OLD[0]))
        writer.writeheader()
        writer.writerows(OLD)


def read(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def checkpoint(tmp_path, *, epoch: int, stepped: int, global_step: int):
    path = tmp_path / "last.ckpt"
    loops = {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": stepped}}}
    torch.save({"epoch": epoch, "global_step": global_step, "loops": loops}, path)
    return path


def test_resumed_run_keeps_the_rows_before_its_checkpoint_and_widens_the_header(tmp_path):
    write_old(tmp_path / "csv")
    last = checkpoint(tmp_path, epoch=1, stepped=8, global_step=16)  # two optimisers: global_step differs
    assert checkpoint_position(last) == (1, 8)
    logger = HistoryCSVLogger(save_dir=str(tmp_path), resume_from=str(last))
    logger.log_metrics({"train/loss": 1.25, "train/lr": 0.1, "epoch": 2}, step=9)
    header, rows = read(tmp_path / "csv" / "metrics.csv")
    assert header == ["epoch", "step", "train/loss", "train/lr", "val/acc"]
    assert rows[:-1] == [{**r, "train/lr": ""} for r in OLD[:5]]  # the epoch-2 row of the killed run is gone
    assert rows[-1] == {"epoch": "2", "step": "9", "train/loss": "1.25", "train/lr": "0.1", "val/acc": ""}


def test_fresh_run_starts_a_new_file(tmp_path):
    write_old(tmp_path / "csv")
    logger = HistoryCSVLogger(save_dir=str(tmp_path))
    logger.log_metrics({"val/acc": 0.25, "epoch": 0}, step=3)
    assert read(tmp_path / "csv" / "metrics.csv") == (
        ["epoch", "step", "val/acc"],
        [{"epoch": "0", "step": "3", "val/acc": "0.25"}],
    )
