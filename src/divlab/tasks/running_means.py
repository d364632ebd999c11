"""Epoch means of training terms (loss parts, rates) without per-step synchronisation.

`update` adds value * n and n to a running sum on the device (two in-place adds, no metric object,
no host sync); `compute` all-reduces every term's (sum, count) in one call at epoch end and resets.
Every rank must update the same names (they run the same code), so the stacked tensors line up.
"""

import torch


class RunningMeans:
    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}   # name -> tensor([sum of value * n, sum of n])

    def update(self, name: str, value: torch.Tensor, n: int) -> None:
        value = value.detach().float()
        total = self.sums.get(name)
        if total is None:
            self.sums[name] = torch.stack([value * n, torch.full_like(value, float(n))])
        else:
            total[0] += value * n
            total[1] += n

    def compute(self, reduce_sum=lambda t: t) -> dict[str, torch.Tensor]:
        """{name: weighted mean over every rank}; `reduce_sum` all-reduces a tensor (e.g.
        `lambda t: strategy.reduce(t, reduce_op="sum")`). Resets the sums."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = reduce_sum(torch.stack([self.sums[k] for k in names]))
        self.sums = {}
        return {name: totals[i, 0] / totals[i, 1].clamp(min=1e-12) for i, name in enumerate(names)}
