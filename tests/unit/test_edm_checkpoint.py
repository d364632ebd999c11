"""EDM checkpoints as safetensors: round trip on a small-channel model, one-sentence name/shape errors,
a clear error for an NVlabs .pkl path, and the conversion of reference names."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.models.edm_checkpoint import (
    convert_reference_state,
    load_edm_weights,
    pretrained_edm_network,
    read_metadata,
    reference_kwargs,
    save_edm_network,
)
from divlab.models.edm_networks import DhariwalUNet, SongUNet

KW = dict(
    img_resolution=16,
    model_channels=16,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(8,),
    label_dim=10,
    dropout=0.0,
)


def randomised(net):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def test_round_trip_restores_every_tensor_and_the_outputs(tmp_path):
    torch.manual_seed(0)
    src = randomised(SongUNet(**KW))
    path = save_edm_network(src, tmp_path / "net.safetensors", sigma_data=0.5, kwargs=dict(KW), source="test")
    dst = pretrained_edm_network(network=SongUNet(**KW).eval(), path=str(path))
    for name, tensor in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], tensor), name
    x, c, y = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.3]), torch.tensor([4, 9])
    torch.testing.assert_close(dst(x, c, y), src(x, c, y))
    meta = read_metadata(path)
    assert meta["architecture"] == "SongUNet" and meta["sigma_data"] == 0.5


def test_shape_mismatch_names_the_first_tensor(tmp_path):
    path = save_edm_network(SongUNet(**KW), tmp_path / "net.safetensors")
    with pytest.raises(ConfigError, match=r"'map_label.weight' has shape \(16, 10\)"):
        load_edm_weights(SongUNet(**{**KW, "label_dim": 5}), path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    path = save_edm_network(SongUNet(**KW), tmp_path / "net.safetensors")
    with pytest.raises(ConfigError, match="no tensor 'map_augment.weight'"):
        load_edm_weights(SongUNet(**KW, augment_dim=9), path)
    path = save_edm_network(SongUNet(**KW, augment_dim=9), tmp_path / "aug.safetensors")
    with pytest.raises(ConfigError, match="tensor 'map_augment.weight' the configured SongUNet lacks"):
        load_edm_weights(SongUNet(**KW), path)


def test_architecture_mismatch_fails(tmp_path):
    path = save_edm_network(SongUNet(**KW), tmp_path / "net.safetensors")
    with pytest.raises(ConfigError, match="holds a SongUNet but the config builds a DhariwalUNet"):
        load_edm_weights(DhariwalUNet(img_resolution=16, model_channels=64, channel_mult=(1, 2)), path)


def test_pkl_path_is_refused_without_unpickling(tmp_path):
    pkl = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="never unpickles.*convert_edm_checkpoint.py"):
        load_edm_weights(SongUNet(**KW), pkl)


def test_missing_file_and_non_safetensors_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_edm_weights(SongUNet(**KW), tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match="cannot be read as safetensors"):
        load_edm_weights(SongUNet(**KW), bad)


def test_reference_state_and_options_convert_to_divlab_names(tmp_path):
    net = randomised(SongUNet(**KW))
    ref_state = {f"model.{k}": v for k, v in net.state_dict().items()}
    ref_state["model.enc.8x8_down.conv0.resample_filter"] = torch.ones(1, 1, 2, 2) / 4  # reference buffers
    state = convert_reference_state(ref_state)
    assert state.keys() == net.state_dict().keys()
    init = dict(
        img_resolution=16,
        img_channels=3,
        label_dim=10,
        model_type="SongUNet",
        use_fp16=False,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
        embedding_type="positional",
        encoder_type="standard",
        resample_filter=[1, 1],
    )
    assert SongUNet(**reference_kwargs("SongUNet", init)).state_dict().keys() == state.keys()
    with pytest.raises(ConfigError, match="embedding_type='fourier' is not supported"):
        reference_kwargs("SongUNet", {**init, "embedding_type": "fourier"})
