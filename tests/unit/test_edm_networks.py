"""EDM's DDPM++ (SongUNet) and ADM (DhariwalUNet) networks: parameter counts equal the reference
configurations' (NVlabs/edm, see divlab.models.edm_networks), small-channel forward passes on CPU."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.models.edm import EDMPrecond
from divlab.models.edm_networks import EDM_REFERENCE_PARAMS, DhariwalUNet, SongUNet


def count(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "name, build",
    [
        ("cifar10_cond", lambda: SongUNet(label_dim=10, augment_dim=9)),
        ("cifar10_uncond", lambda: SongUNet(label_dim=0, augment_dim=9)),
        ("imagenet64_cond", lambda: DhariwalUNet(label_dim=1000)),
    ],
)
def test_parameter_counts_equal_the_reference(name, build):
    with torch.device("meta"):  # shapes only: no memory, no init time
        net = build()
    assert count(net) == EDM_REFERENCE_PARAMS[name]


def small_song(**kw):
    return SongUNet(
        img_resolution=16,
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(8,),
        dropout=0.0,
        **kw,
    )


def small_adm(**kw):
    return DhariwalUNet(
        img_resolution=16,
        model_channels=64,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(8,),
        dropout=0.0,
        **kw,
    )


@pytest.mark.parametrize("build", [small_song, small_adm])
def test_small_networks_run_and_depend_on_noise_and_label(build):
    torch.manual_seed(0)
    net = build(label_dim=10).eval()
    for p in net.parameters():  # zero-initialised outputs would hide the dependence
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([1, 7])
    out = net(x, torch.tensor([0.1, 0.1]), labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, net(x, torch.tensor([1.0, 1.0]), labels))
    assert not torch.allclose(out, net(x, torch.tensor([0.1, 0.1]), torch.tensor([2, 3])))
    feats = net.features(x, torch.tensor([0.1, 0.1]), labels)
    assert feats.shape == (2, net.width)


@pytest.mark.parametrize("build", [small_song, small_adm])
def test_unconditional_network_in_edm_precond_starts_at_c_skip_x(build):
    net = build()  # zero-initialised output convolution: F = 0
    denoiser = EDMPrecond(net, sigma_data=0.5)
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.2, 1.0, 10.0])
    expected = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1) * x
    torch.testing.assert_close(denoiser(x, sigma), expected)


def test_conditional_network_without_labels_fails_in_one_sentence():
    with pytest.raises(ConfigError, match="label_dim=10"):
        small_song(label_dim=10)(torch.randn(1, 3, 16, 16), torch.zeros(1))
