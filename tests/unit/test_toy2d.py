"""2-D toy sets: seeded, the stated mixture parameters, subsets, and the data module."""

import pytest
import torch

from divlab.data.toy2d import (
    DATASETS,
    Toy2DDataModule,
    grid25_mixture,
    mixture_of,
    ring8_mixture,
    sample_toy2d,
)
from divlab.errors import ConfigError


@pytest.mark.parametrize("name", DATASETS)
def test_sets_are_seeded_and_labelled(name):
    x, y = sample_toy2d(name, 500, seed=3)
    x2, y2 = sample_toy2d(name, 500, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (500, 2) and x.dtype == torch.float32
    assert not torch.equal(x, sample_toy2d(name, 500, seed=4)[0])
    sub, labels = sample_toy2d(name, 300, seed=0, subset=[1])
    assert len(sub) == 300 and (labels == 1).all()


def test_mixture_parameters_match_the_samples():
    m = grid25_mixture()
    assert torch.isclose(m.weights.min(), torch.tensor(1 / 61, dtype=torch.float64))
    x, y = m.sample(100_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(y, minlength=25).double() / len(y)
    assert (freq - m.weights).abs().max() < 0.005
    resid = x.double() - m.means[y]
    assert abs(resid.std() - 0.1) < 0.002
    assert abs(x.double().std(0).mean() - m.coordinate_std()) < 0.02
    ring = ring8_mixture()
    assert torch.allclose(ring.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))


def test_subset_restricts_the_mixture_and_module_splits_differ():
    dm = Toy2DDataModule(dataset="ring8", subset=[0, 2, 4, 6], n_train=64, n_val=32, n_test=32)
    assert dm.mixture.num_components == 4 and torch.allclose(
        dm.mixture.weights.sum(), torch.tensor(1.0).double()
    )
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert set(y.tolist()) <= {0, 2, 4, 6}
    assert not torch.equal(dm.points("val"), dm.points("test"))
    assert mixture_of("moons") is None and Toy2DDataModule(dataset="moons").mixture is None
    with pytest.raises(ConfigError, match="subset"):
        Toy2DDataModule(dataset="moons", subset=[2])
    with pytest.raises(ConfigError, match="dataset"):
        Toy2DDataModule(dataset="spiral")
