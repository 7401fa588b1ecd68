"""Fuzzing the readers of gpq_keras' own files: random and mutated bytes and arrays into
`PQIndex.load` and `load_gpq` (`.keras`) must give a loaded object or the project's
`FileFormatError`, nothing else.

Bounded in examples (derandomized, so CI sees the same cases) to keep the suite fast.
"""

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpq_keras.files import FileFormatError
from gpq_keras.retrieval import PQIndex
from gpq_keras.retrieval import checksum as _checksum

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _only_our_errors(load, path):
    """Call load(path): a result, or FileFormatError; any other exception fails the test with the
    input."""
    try:
        return load(path)
    except FileFormatError:
        return None
    except Exception as exc:  # noqa: BLE001 - the point of the test
        data = open(path, "rb").read()
        pytest.fail(
            f"{type(exc).__name__} escaped from {load.__qualname__} on {len(data)} bytes "
            f"{data[:64]!r}...: {exc}"
        )


@st.composite
def mutations(draw, original):
    """Bytes of `original` truncated, with bytes flipped, or with garbage inserted."""
    data = bytearray(original)
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    i = draw(st.integers(0, len(data)))
    return bytes(data[:i]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[i:])


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    index.add(
        rng.standard_normal((20, 12)).astype(np.float32),
        labels=np.arange(20) % 3,
        sources=[f"images/{i}.png" for i in range(20)],
    )
    index.class_names = ["cat", "dog", "bird"]
    path = tmp_path_factory.mktemp("index") / "db.npz"
    index.save(path)
    return path.read_bytes()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_into_pqindex_load(tmp_path, data):
    path = tmp_path / "x.npz"
    path.write_bytes(data)
    assert _only_our_errors(PQIndex.load, path) is None


@FUZZ
@given(data=st.data())
def test_mutated_index_files_into_pqindex_load(tmp_path, index_file, data):
    path = tmp_path / "x.npz"
    path.write_bytes(data.draw(mutations(index_file)))
    loaded = _only_our_errors(PQIndex.load, path)
    if (
        loaded is not None
    ):  # a mutation the file survives (e.g. in zip padding) loads the same index
        assert loaded.ntotal == 20


@FUZZ
@given(
    key=st.sampled_from(
        [
            "mode",
            "num_subspaces",
            "nbits",
            "codebook",
            "codes",
            "ids",
            "labels",
            "format_version",
            "model_fingerprint",
            "sources",
            "class_names",
        ]
    ),
    value=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.dtype("<U3"), bool]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=24),
    ),
)
def test_resealed_arrays_of_any_type_into_pqindex_load(tmp_path, index_file, key, value):
    """A consistent file (its checksum recomputed) with one array replaced by anything."""
    source = tmp_path / "source.npz"
    source.write_bytes(index_file)
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = value
    arrays["checksum"] = np.array(_checksum(arrays))
    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    _only_our_errors(PQIndex.load, path)


@pytest.fixture(scope="module")
def keras_file():
    import os

    return open(
        os.path.join(os.path.dirname(__file__), "data", "gpq_0.1.0_tiny.keras"), "rb"
    ).read()


def _load_gpq(path):
    from gpq_keras.model import load_gpq

    return load_gpq(path)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_keras_files_into_load_gpq(tmp_path, keras_file, data):
    path = tmp_path / "m.keras"
    path.write_bytes(data.draw(mutations(keras_file)))
    _only_our_errors(_load_gpq, path)


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_keras_files_with_a_mutated_config_into_load_gpq(tmp_path, keras_file, data):
    """A whole archive whose config.json is valid JSON with one value of the GPQ config replaced."""
    with zipfile.ZipFile(io.BytesIO(keras_file)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    fields = config["config"]["config"]
    key = data.draw(st.sampled_from(sorted(fields)))
    fields[key] = data.draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-3, 10**6),
            st.text(max_size=5),
            st.floats(allow_nan=True),
            st.lists(st.integers(-2, 600), max_size=5),
        )
    )
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    _only_our_errors(_load_gpq, path)


def test_a_keras_file_that_is_not_a_gpq_model(tmp_path):
    import keras

    path = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    with pytest.raises(
        FileFormatError, match="dense.keras: not a loadable GPQ model: it holds a Sequential"
    ):
        _load_gpq(path)
