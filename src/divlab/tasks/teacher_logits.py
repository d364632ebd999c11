"""Teacher-logit cache: the frozen teacher's logits on the training split, computed once and reused.

On data without random augmentation (digits, MNIST-5k, Fashion-MNIST) the teacher sees the same
training images in every epoch and every KD run, so its logits are computed once per (teacher
weights, data split) and stored as `<paths.teacher_dir>/logits/<teacher hash>-<data hash>.pt`.
The training split is wrapped so that each example also yields its index in the split; the task
looks its teacher logits up by that index, so shuffling and DDP shards (any sampler) stay correct.

    distill.cache_teacher_logits: auto   # on when the data module is not augmented (says so when off)
                                  true   # on; augmented data fails with one sentence
                                  false  # off: the teacher runs on every batch
"""

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from divlab.errors import ConfigError
from divlab.utils.hashing import stable_hash

SETTINGS = ("auto", True, False)
FORMAT = 1


class IndexedDataset(Dataset):
    """`dataset[i] + (i,)`: the example and its position in the split."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)


def weights_hash(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes, dtypes, values): the same weights, however provided."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:10]


def data_hash(cfg: DictConfig, n: int) -> str:
    """Hash of what fixes the training split's images: the data config minus loader settings, and its size."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("batch_size", "num_workers"):
        data.get("datamodule", {}).pop(key, None)
    return stable_hash({"data": data, "split": "train", "size": n})


def cache_enabled(cfg: DictConfig, datamodule) -> bool:
    """Whether this run uses the cache; `auto` on augmented data says once that it is off."""
    from divlab.utils.console import say

    setting = cfg.distill.get("cache_teacher_logits", "auto")
    if setting not in SETTINGS:
        raise ConfigError(f"distill.cache_teacher_logits must be auto, true or false, got {setting!r}")
    augmented = getattr(datamodule, "augmented", None)
    has_splits = hasattr(datamodule, "_splits")
    if setting is False:
        return False
    if augmented is None or not has_splits:
        if setting is True:
            raise ConfigError(
                f"distill.cache_teacher_logits=true needs a divlab data module that says whether "
                f"it augments; {type(datamodule).__name__} does not, so set it to auto or false"
            )
        return False
    if augmented:
        if setting is True:
            raise ConfigError(
                f"distill.cache_teacher_logits=true, but data={cfg.data.name} augments its training "
                f"images at random, so the teacher must see each batch; set it to auto or false"
            )
        say(
            f"teacher-logit cache off: data={cfg.data.name} augments its training images at random, "
            f"so the teacher runs on every batch"
        )
        return False
    return True


@torch.no_grad()
def compute_logits(
    teacher: nn.Module, dataset: Dataset, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(N, K) float32 logits of `teacher` (eval mode) on `dataset` in index order."""
    teacher.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out.append(teacher(batch[0].to(device)).float().cpu())
    return torch.cat(out)


def cached_logits(
    cfg: DictConfig, teacher: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, Path, bool]:
    """(logits, cache file, whether it was a hit): loads the file, or computes and writes it under a lock."""
    key = f"{weights_hash(teacher)}-{data_hash(cfg, len(dataset))}"
    path = Path(cfg.paths.teacher_dir) / "logits" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    hit = True
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            hit = False
            logits = compute_logits(teacher, dataset, device=device)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save({"format": FORMAT, "key": key, "logits": logits}, tmp)
            os.replace(tmp, path)
    record = torch.load(path, map_location="cpu", weights_only=True)
    logits = record["logits"]
    if record.get("key") != key or logits.shape[0] != len(dataset):
        raise ConfigError(f"teacher-logit cache {path} does not match this teacher and data; delete it")
    return logits, path, hit


def index_training_split(datamodule) -> Dataset:
    """Make the data module's training split yield (x, y, index); returns the unwrapped split."""
    datamodule.setup("fit")
    split = datamodule._splits["train"]
    if isinstance(split, IndexedDataset):
        return split.dataset
    datamodule._splits["train"] = IndexedDataset(split)
    return split
