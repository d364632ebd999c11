"""task=evaluate and divlab.metrics.fid: FID / IS / precision-recall through torchmetrics with a stand-in
feature extractor (no Inception download in tests), the one-sentence offline error, and generator loading."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.metrics.fid import (
    GenerativeScores,
    PooledPixels,
    inception_extractors,
    knn_precision_recall_chunked,
    score_generator,
    to_uint8,
)
from divlab.metrics.generative import knn_precision_recall
from divlab.metrics.image import frechet_distance_of


def images(n, seed, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return to_uint8((torch.rand(n, 3, 8, 8, generator=gen) + shift).clamp(0, 1), low=0.0, high=1.0)


def scores(**kw):
    return GenerativeScores(pool=PooledPixels(size=2), logits=PooledPixels(size=2), pr_samples=200, **kw)


def test_fid_matches_an_independent_frechet_distance_and_orders_shifted_sets():
    real, near, far = images(300, 0), images(300, 1), images(300, 2, shift=0.3)
    pool = PooledPixels(size=2)
    results = {}
    for name, fake in (("near", near), ("far", far)):
        s = scores()
        s.add_reference(real)
        s.add_generated(fake)
        results[name] = s.compute()
        expected = frechet_distance_of(pool(real).double(), pool(fake).double())
        assert results[name]["fid"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert results["far"]["fid"] > 10 * results["near"]["fid"]
    assert results["far"]["precision"] < results["near"]["precision"]
    assert 1.0 <= results["near"]["inception_score"] <= 12.0  # exp(entropy) of a 12-way softmax at most


def test_chunked_precision_recall_equals_the_plain_one(monkeypatch):
    import divlab.metrics.fid as fid

    monkeypatch.setattr(fid, "PR_CHUNK", 7)  # many chunks
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 4, generator=gen), torch.randn(40, 4, generator=gen) + 0.5
    assert knn_precision_recall_chunked(real, fake, k=3) == pytest.approx(
        knn_precision_recall(real, fake, k=3)
    )


def test_score_generator_feeds_num_samples_in_batches():
    seen = []

    def generate(i, n):
        seen.append(n)
        return images(n, 100 + i)

    out = score_generator(generate, [images(64, 0), images(36, 1)], scores(), num_samples=70, batch_size=32)
    assert seen == [32, 32, 6] and out["num_generated"] == 70 and out["num_reference"] == 100


def test_offline_inception_fails_in_one_sentence(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(
        ConfigError, match="Inception-v3 weights .* could not be loaded .*evaluate.inception_weights"
    ):
        inception_extractors()


def test_too_few_images_fail():
    s = scores()
    s.add_reference(images(1, 0))
    with pytest.raises(ConfigError, match="at least 2 reference"):
        s.compute()


def test_load_generator_takes_the_ema_weights_and_names_a_mismatch(compose_cfg, tmp_path):
    from divlab.models.edm_networks import SongUNet
    from divlab.tasks.evaluate import load_generator

    cfg = compose_cfg(
        "experiment=onestep/cifar10/fdistill_js",
        "teacher=edm_cifar10_small",
        "task=evaluate",
        "trainer=cpu",
        "data.datamodule.root=unused",
        f"evaluate.generator={tmp_path / 'g.ckpt'}",
    )
    kw = {k: v for k, v in cfg.student.model.items() if k != "_target_"}
    net = SongUNet(**kw)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    state = {f"generator_ema.module.net.{k}": v for k, v in net.state_dict().items()}
    state.update({f"generator.net.{k}": torch.zeros_like(v) for k, v in net.state_dict().items()})
    torch.save({"divlab": {"kind": "lightning"}, "state_dict": state}, tmp_path / "g.ckpt")
    generator = load_generator(cfg)
    for k, v in net.state_dict().items():
        assert torch.equal(generator.net.state_dict()[k], v)
    torch.save(
        {"divlab": {"kind": "lightning"}, "state_dict": {"generator_ema.module.net.other": torch.zeros(1)}},
        tmp_path / "g.ckpt",
    )
    with pytest.raises(ConfigError, match="does not fit student.model"):
        load_generator(cfg)
