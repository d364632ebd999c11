"""One-step tasks on data without in-memory points (data=image_folder, the ImageNet-64 recipes): reference images
from the data module's loaders (divlab.data.loaders.split_images), the build checks, and class labels for a
class-conditional teacher in task=sample_teacher (issue 18)."""

import pytest
import torch
from torch import nn

from divlab.data.loaders import split_images
from divlab.errors import ConfigError
from divlab.models.edm import EDMPrecond
from divlab.models.edm_networks import SongUNet


@pytest.fixture
def folder(tmp_path, data_writer):
    """train/ with 3 classes x 4 images, val/ with 3 x 5 (the test split is val): 16x16 PNGs."""
    layout = {"train": {c: 4 for c in "abc"}, "val": {c: 5 for c in "abc"}}
    return data_writer("write_image_folder")(tmp_path / "images", layout, size=(16, 16))


def image_module(root, **kwargs):
    from divlab.data import ImageFolderDataModule

    dm = ImageFolderDataModule(
        root=str(root),
        image_size=16,
        resize_size=16,
        augment=False,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        **kwargs,
    )
    dm.setup()
    return dm


def test_split_images_reads_the_first_images_of_the_eval_loader(folder):
    dm = image_module(folder, batch_size=4)
    everything = torch.cat([batch[0] for batch in dm.test_dataloader()])
    assert everything.shape == (15, 3, 16, 16)
    first = split_images(dm, "test", limit=7)
    assert torch.equal(first, everything[:7])  # capped, in the loader's order
    assert torch.equal(split_images(dm, "val", limit=100), everything)  # fewer than the cap: all of them
    assert first.min() >= -1 and first.max() <= 1  # EDM's [-1, 1] with mean = std = 0.5


def small_conditional(label_dim: int = 3, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = SongUNet(
        img_resolution=16,
        label_dim=label_dim,
        augment_dim=0,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
    )
    with torch.no_grad():
        for p in net.parameters():  # random everywhere: the zero-initialised outputs would hide the label
            p.normal_(0, 0.1)
    return EDMPrecond(net, sigma_data=0.5).eval().requires_grad_(False)


class Recorder(nn.Module):
    """The teacher, recording the class labels of every call."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.net, self.calls = teacher, teacher.net, []

    def forward(self, x, sigma, class_labels=None):
        self.calls.append(class_labels)
        return self.teacher(x, sigma, class_labels)


def sampler_task(teacher, **kwargs):
    from divlab.tasks.sample_teacher import TeacherSampler

    label_dim = int(getattr(teacher.net, "label_dim", 0))
    return TeacherSampler(teacher=teacher, label_dim=label_dim, method="euler", num_steps=2, seed=3, **kwargs)


def test_sample_teacher_passes_seeded_uniform_labels_to_a_conditional_teacher():
    teacher = Recorder(small_conditional())
    z = torch.randn(48, 3, 16, 16)
    out = sampler_task(teacher).teacher_sampler()(z)
    assert len(teacher.calls) == 2  # Euler, 2 steps: every call carries labels
    labels = teacher.calls[0]
    assert labels is not None and labels.shape == (48,) and all(torch.equal(c, labels) for c in teacher.calls)
    assert set(labels.tolist()) == {0, 1, 2}  # uniform over the classes
    again = Recorder(small_conditional())
    assert torch.equal(sampler_task(again).teacher_sampler()(z), out)  # seeded
    assert torch.equal(again.calls[0], labels)
    # the labels matter: the same latents with one fixed class give other images
    fixed = Recorder(small_conditional())
    other = sampler_task(fixed, class_label=2).teacher_sampler()(z)
    assert torch.equal(fixed.calls[0], torch.full((48,), 2))
    differs = (other - out).flatten(1).abs().amax(1) > 1e-4
    assert torch.equal(differs, labels != 2)  # only where the drawn class was not 2


def test_sample_teacher_calls_an_unconditional_teacher_without_labels():
    teacher = Recorder(small_conditional(label_dim=0))
    sampler_task(teacher).teacher_sampler()(torch.randn(4, 3, 16, 16))
    assert teacher.calls == [None, None]


def test_sample_teacher_class_label_needs_a_conditional_teacher(compose_cfg, tmp_path):
    from divlab.models.edm_checkpoint import save_edm_network
    from divlab.tasks.sample_teacher import build_teacher_sampler
    from divlab.utils.checks import build as build_spec

    def compose(label_dim: int, class_label: int):
        return compose_cfg(
            "experiment=onestep/cifar10/fdistill_js",
            "task=sample_teacher",
            "trainer=cpu",
            "teacher=edm_cifar10_small",
            f"teacher.model.network.label_dim={label_dim}",
            f"teacher.model.path={tmp_path / f'small{label_dim}.safetensors'}",
            "data.datamodule.root=unused",
            f"+sample.class_label={class_label}",
        )

    for label_dim in (0, 10):
        cfg = compose(label_dim, 3)
        save_edm_network(build_spec(cfg.teacher.model.network), cfg.teacher.model.path)
    task = build_teacher_sampler(compose(10, 3))
    assert (task.label_dim, task.class_label) == (10, 3)
    with pytest.raises(ConfigError, match="sample.class_label=3 needs a class-conditional teacher"):
        build_teacher_sampler(compose(0, 3))
    with pytest.raises(ConfigError, match="sample.class_label=10"):
        build_teacher_sampler(compose(10, 10))


def test_one_step_build_checks_data_without_points(compose_cfg, folder):
    """data=image_folder passes the build check (images: loaders); a classifier image_metrics and data that is
    neither points nor images each stop in one sentence."""
    from divlab.tasks.one_step import build

    cfg = compose_cfg(
        "experiment=onestep/imagenet64/fdistill_js",
        "trainer=cpu",
        f"data.datamodule.root={folder}",
        "image_metrics={classifier:x}",
    )
    with pytest.raises(ConfigError, match="set image_metrics=pixels"):
        build(cfg, datamodule=image_module(folder))

    class Tokens:  # no points(), no (C, H, W) input_shape
        input_shape = (32,)

    with pytest.raises(ConfigError, match="trains on points or images"):
        build(cfg, datamodule=Tokens())
