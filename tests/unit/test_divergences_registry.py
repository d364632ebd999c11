"""Registry, errors and the Hydra configs of every member."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from divlab.divergences import available, get_divergence

CONF = Path(__file__).resolve().parents[2] / "conf" / "divergence"

MEMBERS = {
    "forward_kl",
    "reverse_kl",
    "jeffreys",
    "js",
    "generalized_js",
    "total_variation",
    "pearson_chi2",
    "neyman_chi2",
    "squared_hellinger",
    "softened_reverse_kl",
    "alpha",
    "skew_kl",
    "skew_reverse_kl",
    "alpha_beta",
    "chi2_mixture",
    "hinton_kd",
    "dkd",
    "pld",
    "sinkd",
    "ofa",
    "mmd",
    "energy_distance",
    "sliced_wasserstein",
    "sinkhorn",
    "cauchy_schwarz",
    "distance_covariance",
}


def test_available_lists_every_member_sorted():
    assert available() == sorted(MEMBERS)


def test_unknown_name_lists_the_choices():
    with pytest.raises(
        ValueError, match=r"Unknown divergence 'kl'; choose one of: alpha, alpha_beta, .*forward_kl"
    ):
        get_divergence("kl")


@pytest.mark.parametrize(
    "name, params, key",
    [
        ("alpha", {"alpha": float("inf")}, "alpha"),
        ("skew_kl", {"alpha": 1.0}, "alpha must be in \\[0, 1\\)"),
        ("skew_reverse_kl", {"alpha": -0.1}, "alpha must be in \\[0, 1\\)"),
        ("generalized_js", {"beta": 1.5, "normalized": True}, "beta must be in \\[0, 1\\]"),
        ("generalized_js", {"beta": 0.0}, "beta must be in \\(0, 1\\).*forward_kl"),
        ("generalized_js", {"beta": 1.5}, "beta must be in \\(0, 1\\)"),
        ("hinton_kd", {"temperature": 0.0}, "temperature must be in \\(0, inf\\)"),
        ("dkd", {"temperature": -1.0}, "temperature"),
        ("pld", {"tau": 0}, "tau"),
        ("ofa", {"epsilon": 0}, "epsilon"),
        ("sinkd", {"iterations": 0}, "iterations must be an integer >= 1"),
        ("sinkd", {"plan": "uniform"}, "plan must be one of reference, pot"),
        ("sinkhorn", {"epsilon": 0}, "epsilon"),
        ("mmd", {"bandwidths": [1.0, -2.0]}, "bandwidths"),
        ("sliced_wasserstein", {"p": 0.5}, "p must be in \\[1, inf\\)"),
        ("forward_kl", {"reduction": "avg"}, "reduction must be one of none, mean, sum"),
        ("forward_kl", {"alpha": 0.5}, "unknown parameter\\(s\\) alpha; it accepts: reduction"),
    ],
)
def test_bad_parameters_fail_at_construction_naming_the_key(name, params, key):
    with pytest.raises(ValueError, match=key):
        get_divergence(name, **params)


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_every_member_has_a_config_that_instantiates_with_defaults(name):
    path = CONF / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    assert cfg._target_ == "divlab.divergences.get_divergence" and cfg.name == name
    d = instantiate(cfg)
    assert d.name == name
    defaults = get_divergence(name)
    assert d.extra_repr() == defaults.extra_repr()  # the config states the defaults, not other values


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_every_member_runs_on_its_call_shape(name):
    d = get_divergence(name)
    g = torch.Generator().manual_seed(0)
    if d.kind == "samples":
        out = d(torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g))
        assert out.shape == ()
    else:
        t, s = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
        out = d(t, s, labels=torch.randint(0, 6, (2, 3), generator=g))
        assert out.shape == (() if d.kind == "batch" else (2, 3))
    assert torch.isfinite(out).all()
    assert d.kind in ("categorical", "batch", "samples")
    assert getattr(d, "needs_labels", False) == (name in {"dkd", "pld", "ofa"})


OWN_TEMPERATURE = {"hinton_kd", "dkd", "ofa", "pld", "sinkd"}


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_every_kd_member_says_whether_it_owns_its_temperature(name):
    cls = type(get_divergence(name))
    if cls.kind == "samples":
        return
    declared = [c for c in cls.__mro__ if "owns_temperature" in vars(c)]
    assert declared, f"{name} inherits no explicit owns_temperature"
    assert cls.owns_temperature is (name in OWN_TEMPERATURE)
