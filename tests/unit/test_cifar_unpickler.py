"""CIFAR batches are read with a restricted unpickler (issue 15, item 12): the real format loads, a crafted
batch runs no code even with data.datamodule.check_integrity=false and fails naming the file."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from divlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule, safe_unpickle
from divlab.errors import ConfigError


class Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a crafted pickle would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize(("module", "classes"), [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)])
def test_real_format_loads_through_the_safe_unpickler(tmp_path, data_writer, module, classes):
    written = data_writer("write_cifar")(tmp_path, classes)
    dm = module(root=str(tmp_path), check_integrity=False, augment=False)
    dm.setup("fit")
    train = dm._splits["train"].dataset
    first = "data_batch_1" if classes == 10 else "train"
    assert np.array_equal(train.data[0].transpose(2, 0, 1).reshape(-1), written[first][0])
    assert len(dm.classes) == classes


def test_crafted_batch_runs_no_code_and_names_the_file(tmp_path, data_writer):
    data_writer("write_cifar")(tmp_path, 10)
    marker = tmp_path / "code_ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    dm = CIFAR10DataModule(root=str(tmp_path), check_integrity=False)
    with pytest.raises(
        ConfigError,
        match=r"cannot be read \(UnpicklingError: .*data_batch_3: the file refers to "
        r"posix\.mkdir, which a CIFAR batch never holds\)",
    ):
        dm.setup("fit")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(batch)
    assert not marker.exists()
