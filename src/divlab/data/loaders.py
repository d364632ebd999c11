"""Data loaders whose batch order is a function of (seed, epoch) alone.

The training loader always uses a DistributedSampler sized to the trainer's world, so that
(a) a resumed run sees exactly the batches an uninterrupted run would have seen (Lightning
calls `set_epoch`), and (b) under DDP every rank draws a different shard of the same order.
"""

from torch.utils.data import DataLoader, Dataset, DistributedSampler


def seeded_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    trainer=None,
    drop_last: bool = False,
) -> DataLoader:
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


# Loader methods of the data modules that keep their datasets in `self._splits` (train/val/test);
# a module takes them in its class body: `train_dataloader = train_split_loader`.
def train_split_loader(dm) -> DataLoader:
    return seeded_train_loader(
        dm._splits["train"],
        batch_size=dm.batch_size,
        seed=dm.seed,
        num_workers=dm.num_workers,
        trainer=dm.trainer,
    )


def val_split_loader(dm) -> DataLoader:
    return eval_loader(dm._splits["val"], batch_size=256, num_workers=dm.num_workers)


def test_split_loader(dm) -> DataLoader:
    return eval_loader(dm._splits["test"], batch_size=256, num_workers=dm.num_workers)


def split_images(dm, split: str, *, limit: int):
    """The first `limit` images of a split as one tensor (n, *input_shape), read through the module's own
    eval loader (`val_dataloader` / `test_dataloader`): the reference sets of a data module too large to hold
    (an ImageNet image folder), which has no in-memory `points(split)`."""
    import torch

    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    chunks, count = [], 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        chunks.append(images[: limit - count])
        count += len(chunks[-1])
        if count >= limit:
            break
    if not chunks:
        from divlab.errors import ConfigError

        raise ConfigError(
            f"the {split} split of {type(dm).__name__} holds no images; check data.datamodule.root"
        )
    return torch.cat(chunks)
