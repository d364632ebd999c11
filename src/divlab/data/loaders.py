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
