"""task=superpose_images (SuperDiff on 8x8 digits): the composition runs with exact part models (where the
subset of every sample is known: the exact denoiser of a part's training images reproduces them) and with
two briefly trained EDM U-Nets (cached once per subset), the superdiff_digits table's plan, and bad input."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from divlab.errors import ConfigError
from divlab.provision.teacher import cached_teacher_path
from divlab.runner import run
from divlab.tables.cells import plan
from divlab.tables.spec import load_table

CONF = Path(__file__).resolve().parents[2] / "conf"
# the metric classifier for 1 epoch (the KD teacher of `experiment=kd/digits debug=fast`), as in
# tests/integration/test_onestep_digits.py
QUICK = ["image_metrics.classifier.train.max_epochs=1"]


def nearest_train_labels(images: torch.Tensor) -> torch.Tensor:
    """Digit of each image's nearest training image (all ten digits), in the data module's pixel space."""
    from divlab.data.digits import DigitsDataModule

    dm = DigitsDataModule()
    train = dm.points("train").flatten(1).double()
    return dm.labels("train")[torch.cdist(images.flatten(1).double(), train).argmin(1)]


def test_or_puts_mass_on_both_subsets_with_exact_part_models(compose_cfg):
    record = run(
        compose_cfg(
            "experiment=superdiff/digits_split",
            "teacher=edm_gmm_exact",
            "superpose.samplers=[model1,model2,or,and]",
            "superpose.num_samples=120",
            "superpose.num_steps=40",
            *QUICK,
        )
    )
    run_dir, m = Path(record["run_dir"]), record["metrics"]
    samples = torch.load(run_dir / "samples.pt", weights_only=True)
    low = {name: float((nearest_train_labels(s["x"]) <= 4).double().mean()) for name, s in samples.items()}
    assert low["model1"] > 0.95 and low["model2"] < 0.05  # each model alone keeps to its subset
    assert 0.25 < low["or"] < 0.75  # OR: both subsets (the even mixture of the two models)
    assert m["test/and/kappa_outside"] > 0.0 == m["test/or/kappa_outside"]  # AND's kappa leaves [0, 1]
    for name in ("model1", "model2", "or", "and"):
        assert m[f"test/{name}/nfe"] == 80.0  # both models at each of 40 steps
        for key in ("frac_part1", "classes_covered", "ambiguous", "split_mass", "cov1", "cov2", "recall"):
            assert 0.0 <= m[f"test/{name}/{key}"] <= 1.0, key
        parts_sum = m[f"test/{name}/frac_part1"] + m[f"test/{name}/frac_part2"]
        assert abs(parts_sum - 1.0) < 1e-6  # logged as float32
        assert 0.0 <= m[f"test/{name}/class_entropy"] <= torch.log(torch.tensor(10.0)).item() + 1e-9
    assert "test/frac_part1" not in m  # several samplers: prefixed keys only
    for name in ("samples.png", "part_mass_hist.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_trained_part_models_are_cached_once_per_subset(compose_cfg):
    cfg = compose_cfg(
        "experiment=superdiff/digits_split",
        "superpose.samplers=[and]",
        "superpose.num_samples=16",
        "superpose.num_steps=3",
        *QUICK,
    )
    record = run(cfg)
    m = record["metrics"]
    assert m["test/nfe"] == 6.0 and record["global_step"] == 0  # one sampler: unprefixed keys too
    assert 0.0 <= m["test/ambiguous"] <= 1.0 and m["test/ito_dlogq_abs_mean"] >= 0.0
    paths = []
    for part in cfg.superpose.parts:
        part_cfg = cfg.copy()
        with open_dict(part_cfg):
            part_cfg.data.datamodule.subset = list(part)
        paths.append(cached_teacher_path(part_cfg))
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
    state = torch.load(paths[0], weights_only=True)["state_dict"]
    assert any(k.startswith("net.enc.") for k in state)  # EDM's SongUNet, not the smaller UNetSmall


def test_digit_subsets_share_the_full_pixel_normalisation():
    from divlab.data.digits import DigitsDataModule

    full, low = DigitsDataModule(), DigitsDataModule(subset=[4, 0, 1, 2, 3])
    assert set(low.labels("train").tolist()) == {0, 1, 2, 3, 4} and low.subset == [0, 1, 2, 3, 4]
    keep = full.labels("test") <= 4
    assert torch.equal(low.points("test"), full.points("test")[keep])  # same pixels, fewer images
    with pytest.raises(ConfigError, match="data.datamodule.subset"):
        DigitsDataModule(subset=[3, 10])


def test_superdiff_digits_table_plans_every_row(tmp_path, monkeypatch):
    spec = load_table("superdiff_digits", CONF)
    assert [r.name for r in spec.rows][3:] == ["OR (T = 1)", "AND"]
    assert list(spec.seeds) == [0, 1, 2]
    monkeypatch.chdir(tmp_path)
    jobs = plan(spec, conf_dir=str(CONF), seeds=[0], extra=[f"paths.output_root={tmp_path}"])
    assert all(j.state == "missing" for j in jobs), [j.error for j in jobs if j.error]
    assert len({j.run_dir for j in jobs}) == len(spec.rows)  # one run per row, read by every column


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=grid25"], "labelled image data set"),
        (["+data.datamodule.subset=[0,1]"], "splits the data itself"),
        (["superpose.parts=[[0,1],[1,0]]"], "parts are equal"),
        (["superpose.parts=[[0,10],[1]]"], r"superpose.parts\[0\]"),
        (["superpose.samplers=[xor]"], "superpose.samplers"),
        (["superpose.ambiguous_mass=0.7"], "ambiguous_mass"),
        (["teacher=digits_cnn"], "diffusion teacher"),
    ],
)
def test_superpose_images_bad_input(compose_cfg, overrides, message):
    from divlab.tasks.superpose_images import build
    from divlab.utils.hashing import prune_unused

    cfg = prune_unused(compose_cfg("experiment=superdiff/digits_split", *overrides))
    with pytest.raises(ConfigError, match=message):
        build(cfg, datamodule=instantiate(cfg.data.datamodule, seed=0))
