"""RunningMeans: weighted epoch means of training terms, reduced across ranks in one call."""

import torch

from divlab.tasks.running_means import RunningMeans


def test_weighted_mean_and_reset():
    means = RunningMeans()
    for value, n in ((1.0, 2), (4.0, 1), (0.5, 4)):
        means.update("loss", torch.tensor(value), n)
    means.update("ce", torch.tensor(3.0), 7)
    out = means.compute()
    assert torch.isclose(out["loss"], torch.tensor((1.0 * 2 + 4.0 + 0.5 * 4) / 7))
    assert out["ce"].item() == 3.0
    assert means.compute() == {}  # reset after compute


def test_two_ranks_are_summed_before_dividing():
    """Rank 0 saw 3 examples of mean 1, rank 1 one example of 5: the epoch mean is 2, not 3."""
    ranks = [RunningMeans(), RunningMeans()]
    ranks[0].update("kd", torch.tensor(1.0), 3)
    ranks[1].update("kd", torch.tensor(5.0), 1)
    stacked = [torch.stack([r.totals()[k] for k in sorted(r.totals())]) for r in ranks]
    everyone = stacked[0] + stacked[1]
    out = ranks[0].compute(reduce_sum=lambda t: everyone)
    assert out["kd"].item() == 2.0


def test_update_does_not_keep_the_graph():
    x = torch.tensor(2.0, requires_grad=True)
    means = RunningMeans()
    means.update("loss", x * 3, 2)
    assert not means.compute()["loss"].requires_grad


def test_folding_keeps_the_mean_and_tensor_counts():
    """More updates than one fold holds, with counts given as tensors: the same mean as a plain sum."""
    from divlab.tasks.running_means import FOLD

    means, values, counts = RunningMeans(), torch.rand(FOLD * 2 + 7), torch.randint(1, 9, (FOLD * 2 + 7,))
    for v, n in zip(values, counts):
        means.update("loss", v, n)
    assert len(means.pending["loss"]) == 7  # two folds done, seven values kept
    expected = (values * counts).sum() / counts.sum()
    assert torch.isclose(means.compute()["loss"], expected, rtol=1e-5)
