"""`import gpq_keras.data` and its NumPy-only modules stay free of TensorFlow and Keras."""

import json
import subprocess
import sys

import pytest

import gpq_keras.data

MODULES = (
    "gpq_keras.data",
    "gpq_keras.data.labels",
    "gpq_keras.data.split",
    "gpq_keras.data.user",
    "gpq_keras.data.cifar10",
    "gpq_keras.data.nuswide",
    "gpq_keras.data.digits",
    "gpq_keras.data.images",
    "gpq_keras.data.image_files",
    "gpq_keras.data.lists",
    "gpq_keras.data.protocols",
    "gpq_keras.data.check",
    "gpq_keras.image_converter",
)
PIPELINE_NAMES = ("normalize", "denormalize", "train_dataset", "eval_dataset")

SCRIPT = f"""
import importlib, json, sys
for name in {MODULES!r}:
    importlib.import_module(name)
import gpq_keras.data as data
from gpq_keras.data import digits, cifar10
digits.load_raw()  # the packaged digits read with NumPy only
cifar10.similarity_matrix([0, 1], [1, 1, 0])
names = dir(data)
print(json.dumps({{"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "sklearn": "sklearn" in sys.modules, "dir": names, "all": data.__all__}}))
"""


def test_importing_the_data_modules_does_not_import_tensorflow_or_keras():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert not found["tensorflow"] and not found["keras"] and not found["sklearn"]
    assert set(PIPELINE_NAMES) <= set(found["all"]) and set(found["all"]) <= set(found["dir"])


def test_pipeline_names_load_on_first_use():
    from gpq_keras import image_converter
    from gpq_keras.data import numpy_pipeline, tf_pipeline, train_dataset

    owners = {"denormalize": image_converter}
    for name in PIPELINE_NAMES:
        assert getattr(gpq_keras.data, name) is getattr(owners.get(name, tf_pipeline), name)
    for name in ("train_pydataset", "eval_pydataset", "ArrayBatches", "TwoStreamBatches"):
        assert getattr(gpq_keras.data, name) is getattr(numpy_pipeline, name)
    assert train_dataset is tf_pipeline.train_dataset
    with pytest.raises(AttributeError, match="module 'gpq_keras.data' has no attribute 'nothing'"):
        gpq_keras.data.nothing  # noqa: B018
