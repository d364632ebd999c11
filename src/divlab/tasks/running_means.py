"""Epoch means of training terms (loss parts, rates) without per-step synchronisation or per-step kernels.

`update` only keeps the detached value and its weight n (no arithmetic, no metric object, no host
sync); every `FOLD` updates of a term, and at `compute`, the kept values are folded into a running
(sum of value * n, sum of n) on the device with one stack and one sum. `compute` all-reduces every
term's (sum, count) in one call at epoch end and resets. Every rank must update the same names (they
run the same code), so the stacked tensors line up. (torchmetrics' MeanMetric checks each update for
NaN, which syncs the host with the device every step.)
"""

import torch

FOLD = 256  # values kept per term before they are folded into its running sums


class RunningMeans:
    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> tensor([sum of value * n, sum of n])
        self.pending: dict[str, list] = {}  # name -> [(value, n)] not folded yet

    def update(self, name: str, value: torch.Tensor, n: int | torch.Tensor) -> None:
        kept = self.pending.setdefault(name, [])
        kept.append((value.detach(), n))
        if len(kept) >= FOLD:
            self._fold(name)

    def _fold(self, name: str) -> None:
        kept = self.pending.pop(name, [])
        if not kept:
            return
        values = torch.stack([v.float().reshape(()) for v, _ in kept])
        weights = torch.stack(
            [
                n.detach().to(values).reshape(()) if isinstance(n, torch.Tensor) else torch.tensor(float(n))
                for _, n in kept
            ]
        ).to(values)
        folded = torch.stack([(values * weights).sum(), weights.sum()])
        total = self.sums.get(name)
        self.sums[name] = folded if total is None else total + folded

    def totals(self) -> dict[str, torch.Tensor]:
        """{name: tensor([sum of value * n, sum of n])} of this rank, every kept value folded in."""
        for name in list(self.pending):
            self._fold(name)
        return self.sums

    def compute(self, reduce_sum=lambda t: t) -> dict[str, torch.Tensor]:
        """{name: weighted mean over every rank}; `reduce_sum` all-reduces a tensor (e.g.
        `lambda t: strategy.reduce(t, reduce_op="sum")`). Resets the sums."""
        sums = self.totals()
        if not sums:
            return {}
        names = sorted(sums)
        totals = reduce_sum(torch.stack([sums[k] for k in names]))
        self.sums = {}
        return {name: totals[i, 0] / totals[i, 1].clamp(min=1e-12) for i, name in enumerate(names)}
