"""Samples in a batch, for Lightning's ThroughputMonitor (conf/callbacks/throughput.yaml)."""

import torch


def batch_size(batch) -> int:
    """Leading size of the first tensor in a batch (a tensor, a tuple/list, or a dict of them)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, dict, list, tuple)):
            return batch_size(item)
    raise TypeError(f"a batch of type {type(batch).__name__} holds no tensor to count samples from")
