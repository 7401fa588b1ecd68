import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (numpy_reference, tf1_reference)

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.config.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices (before TensorFlow's runtime starts), so the tf.distribute tests run
    # two replicas on this machine; everything else runs on the first, as without the split.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

from gpq_keras.config import GPQConfig  # noqa: E402


def pytest_report_header(config):
    return (
        f"Keras backend: {BACKEND} "
        "(KERAS_BACKEND; `make test-jax` and `make test-torch` run the tests marked `backends` on "
        "JAX and on torch)"
    )


def pytest_collection_modifyitems(config, items):
    """On another backend than TensorFlow (jax, torch) only the tests marked `backends` run (the
    rest need TensorFlow)."""
    if BACKEND == "tensorflow":
        return
    selected = [item for item in items if item.get_closest_marker("backends")]
    if len(selected) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in selected])
        items[:] = selected


@pytest.fixture
def tiny_config():
    """A small GPQ (M=3, K=4, d=4, narrow VGG on 16x16 images) so tests stay fast."""
    return GPQConfig(
        num_subspaces=3,
        num_codewords=4,
        subspace_dim=4,
        num_classes=5,
        image_shape=(16, 16, 3),
        filters=(4, 8, 8, 8),
    )


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
