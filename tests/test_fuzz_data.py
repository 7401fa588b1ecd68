"""Damaged data files: every loader answers FileFormatError (one line naming the file) or loads,
nothing else.

Hypothesis feeds random bytes, mutations of valid files (truncations, flipped, inserted, deleted and
overwritten bytes, biased to the headers at both ends) and random arrays / pickled values to every
file reader: npz data (`user.load_npz`), CIFAR-10 python batches (`cifar10.read_batch`,
`read_label_names`), NUS-WIDE lists (`nuswide.read_list`) and similarity `.mat` files
(`cifar10.load_similarity`). Only `gpq_keras.files.FileFormatError` (subclasses included) or a
successful load may come out; anything else fails the test and shows the input. Runs are
derandomized (the same examples every time) and bounded in examples and time; an example that hangs
is stopped by an alarm.

The second half has one test per case of the issue: a truncated npz, an npz claiming 200 GB, a
corrupt image in a folder, a label of 1e9, a CIFAR folder too small for the protocol, empty arrays,
a one-class training set and an out-of-range label in a training batch.
"""

import contextlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import scipy.io  # noqa: F401 - imported here, not inside a timed example
import tensorflow as tf
from data_fakes import fake_cifar_images, py2_pickle_bytes, write_cifar_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpq_keras import files
from gpq_keras.data import Split, cifar10, load_data, nuswide, protocol_split, train_dataset, user
from gpq_keras.data.split import check_training_labels
from gpq_keras.files import FileFormatError

FUZZ = settings(
    max_examples=100,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_SECONDS = 10


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def time_limit(seconds):
    """Raise TimeoutError in the block after `seconds` (a hang becomes a failure, not a stuck
    run)."""

    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_or_refuse(load, path, data):
    """`load(path)` after writing `data` there -> its result, or None for a FileFormatError naming
    the file in one line. Any other exception fails, showing the input."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        with time_limit(HANG_SECONDS):
            return load(path)
    except FileFormatError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message, message
        return None
    except Exception as exc:  # noqa: BLE001 - the point of the suite
        shown = data if len(data) <= 300 else data[:150] + b"..." + data[-150:]
        raise AssertionError(
            f"{getattr(load, '__name__', load)} raised {type(exc).__name__}: {exc} "
            f"for {len(data)} bytes: {shown!r}"
        ) from exc


# --- mutations ------------------------------------------------------------------------------------


def _position(draw, size):
    """An offset in [0, size], biased to the first and last 256 bytes where the headers are."""
    if size == 0:
        return 0
    near = min(size, 256)
    return draw(
        st.one_of(st.integers(0, near), st.integers(size - near, size), st.integers(0, size))
    )


@st.composite
def mutations(draw, valid):
    """`valid` bytes with 1 to 4 truncations, flipped, inserted, deleted or overwritten bytes."""
    data = bytearray(draw(st.sampled_from(valid)) if isinstance(valid, (list, tuple)) else valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        i = _position(draw, len(data))
        if op == "truncate":
            del data[i:]
        elif op == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 32))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[i : i + len(chunk)] = chunk
    return bytes(data)


# --- npz data files -------------------------------------------------------------------------------


def _valid_arrays(multi_hot=False):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    y = np.eye(3, dtype=np.uint8)[np.arange(12) % 3] if multi_hot else np.arange(12) % 3
    return dict(
        x_query=x[:3], y_query=y[:3], x_db=x[3:], y_db=y[3:], x_labeled=x[3:7], y_labeled=y[3:7]
    )


def _npz_bytes(arrays, compressed=False):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


VALID_NPZ = [_npz_bytes(_valid_arrays(m), c) for m in (False, True) for c in (False, True)]


@st.composite
def npz_with_a_mutated_member(draw):
    """A well-formed zip (right CRCs) whose one .npy member is mutated: the .npy header parser's
    input."""
    arrays = _valid_arrays(draw(st.booleans()))
    key = draw(st.sampled_from(sorted(arrays)))
    members = {k: _npy_bytes(v) for k, v in arrays.items()}
    members[key] = draw(mutations(members[key]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(
        buffer, "w", zipfile.ZIP_DEFLATED if draw(st.booleans()) else zipfile.ZIP_STORED
    ) as z:
        for k, v in members.items():
            z.writestr(k + ".npy", v)
    return buffer.getvalue()


_DTYPES = st.sampled_from(
    [
        np.uint8,
        np.int8,
        np.int64,
        np.uint16,
        np.bool_,
        np.float32,
        np.complex64,
        np.dtype("<U2"),
        np.dtype("S3"),
        np.dtype([("a", "u1"), ("b", "<i4")]),
    ]
)


@st.composite
def npz_of_random_arrays(draw):
    """The valid arrays with some replaced by random ones (any dtype, 0 to 4 dims, empty sides),
    dropped, or joined by extra members."""
    arrays = _valid_arrays(draw(st.booleans()))
    for key in draw(st.lists(st.sampled_from(sorted(arrays)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            del arrays[key]
        else:
            arrays[key] = draw(
                hnp.arrays(
                    _DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
                )
            )
    if draw(st.booleans()):
        arrays[draw(st.sampled_from(["x_unlabeled", "extra", "y_unlabeled"]))] = draw(
            hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=1, max_dims=4, max_side=3))
        )
    return _npz_bytes(arrays, draw(st.booleans()))


def _check_loaded_split(split):
    for key in ("x_query", "x_db", "x_labeled", "x_unlabeled"):
        x = getattr(split, key)
        images = x is not None and x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3
        vectors = x is not None and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] >= 1
        assert x is None or (len(x) and (images or (vectors and np.isfinite(x).all())))
    for key in ("y_query", "y_db", "y_labeled"):
        y = getattr(split, key)
        if y is not None and y.ndim == 1:
            assert y.min() >= 0 and y.max() < split.num_classes <= 65536
        elif y is not None:
            assert set(np.unique(y).tolist()) <= {0, 1}


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@FUZZ
@given(data=st.one_of(st.binary(max_size=600), mutations(VALID_NPZ), npz_with_a_mutated_member()))
def test_fuzz_npz_bytes(scratch, data):
    split = load_or_refuse(user.load_npz, scratch / "data.npz", data)
    if split is not None:
        _check_loaded_split(split)


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@FUZZ
@given(data=npz_of_random_arrays())
def test_fuzz_npz_arrays(scratch, data):
    split = load_or_refuse(user.load_npz, scratch / "arrays.npz", data)
    if split is not None:
        _check_loaded_split(split)


# --- CIFAR-10 python batches ----------------------------------------------------------------------


def _valid_batch():
    images, labels = fake_cifar_images(3)
    rows = images.transpose(0, 3, 1, 2).reshape(3, -1)
    return {
        b"batch_label": b"fuzz",
        b"labels": [int(v) for v in labels],
        b"data": rows,
        b"filenames": [b"a.png", b"b.png", b"c.png"],
    }


VALID_BATCHES = [
    py2_pickle_bytes(_valid_batch()),
    pickle.dumps(_valid_batch(), protocol=2),
    pickle.dumps(_valid_batch(), protocol=4),
]
VALID_META = [
    py2_pickle_bytes({b"label_names": [b"cat", b"dog"], b"num_vis": 3072}),
    pickle.dumps({"label_names": ["cat", "dog"]}, protocol=2),
]

_PLAIN = st.recursive(
    st.one_of(
        st.integers(-(2**70), 2**70),
        st.binary(max_size=8),
        st.text(max_size=4),
        st.booleans(),
        st.floats(allow_nan=False),
        st.none(),
        hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(
            st.one_of(st.binary(max_size=6), st.text(max_size=6)), children, max_size=3
        ),
    ),
    max_leaves=12,
)


@st.composite
def pickled_values(draw):
    """Pickles of values a batch might hold: the valid batch with random 'data' / 'labels', or
    anything."""
    if draw(st.booleans()):
        value = _valid_batch()
        for key in draw(
            st.lists(st.sampled_from([b"data", b"labels", "data"]), min_size=1, max_size=2)
        ):
            value[key] = draw(
                st.one_of(
                    _PLAIN,
                    st.lists(st.integers(-(2**63), 2**64), max_size=4),
                    hnp.arrays(
                        st.sampled_from([np.uint8, np.int64, np.float64]),
                        hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
                    ),
                )
            )
    else:
        value = draw(_PLAIN)
    return draw(st.sampled_from([py2_pickle_bytes, lambda v: pickle.dumps(v, protocol=2)]))(value)


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"\x80\x02" + b),
        mutations(VALID_BATCHES),
        pickled_values(),
    )
)
def test_fuzz_cifar_batches(scratch, data):
    loaded = load_or_refuse(cifar10.read_batch, scratch / "data_batch_1", data)
    if loaded is not None:
        images, labels = loaded
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@settings(FUZZ, max_examples=40)
@given(data=st.one_of(st.binary(max_size=300), mutations(VALID_META), pickled_values()))
def test_fuzz_cifar_label_names(scratch, data):
    names = load_or_refuse(
        lambda path: cifar10.read_label_names(os.path.dirname(path)),
        scratch / cifar10.META_FILE,
        data,
    )
    assert names is None or (names and all(isinstance(n, str) for n in names))


# --- NUS-WIDE list files --------------------------------------------------------------------------


def _valid_list(rows=3):
    rng = np.random.default_rng(0)
    return "".join(
        f"images/img_{i}.jpg " + " ".join(map(str, rng.integers(0, 2, 21))) + "\n"
        for i in range(rows)
    ).encode()


_LINE = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda p, v: p + " " + " ".join(v),
        st.text(max_size=10),
        st.lists(
            st.sampled_from(["0", "1", "2", "-1", "01", "1.0", "\u0661"]), min_size=19, max_size=23
        ),
    ),
)


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        mutations(_valid_list()),
        st.lists(_LINE, max_size=5).map(
            lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
        ),
    )
)
def test_fuzz_nuswide_lists(scratch, data):
    loaded = load_or_refuse(nuswide.read_list, scratch / "test.txt", data)
    if loaded is not None:
        paths, labels = loaded
        assert len(paths) == len(labels) > 0 and labels.shape[1] == 21
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1}
        assert all(isinstance(p, str) and "\0" not in p for p in paths)


# --- similarity .mat files ------------------------------------------------------------------------


def _mat_bytes(variables, **options):
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, **options)
    return buffer.getvalue()


def _valid_mats():
    from scipy import sparse

    y = np.arange(8) % 3
    matrix = cifar10.similarity_matrix(y[:3], y[3:])
    return [
        _mat_bytes({cifar10.SIMILARITY_KEY: matrix}, do_compression=True),
        _mat_bytes({cifar10.SIMILARITY_KEY: matrix}),
        _mat_bytes({cifar10.SIMILARITY_KEY: matrix.toarray()}),
        _mat_bytes(
            {cifar10.SIMILARITY_KEY: sparse.csr_matrix(matrix).toarray().astype(np.uint8)},
            format="4",
        ),
    ]


VALID_MATS = _valid_mats()

_MAT_VALUES = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float64, np.int32, np.uint8, np.bool_, np.complex128]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    st.text(max_size=5),
    st.lists(st.integers(-5, 5), max_size=4),
)


@st.composite
def mats_of_random_values(draw):
    key = draw(st.sampled_from([cifar10.SIMILARITY_KEY, "other"]))
    return _mat_bytes({key: draw(_MAT_VALUES)}, do_compression=draw(st.booleans()))


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=400).map(lambda b: VALID_MATS[0][:128] + b),
        mutations(VALID_MATS),
        mats_of_random_values(),
    )
)
def test_fuzz_similarity_mat(scratch, data):
    matrix = load_or_refuse(cifar10.load_similarity, scratch / "cifar10_Similarity.mat", data)
    if matrix is not None:
        assert matrix.ndim == 2 and set(np.unique(matrix.data).tolist()) <= {0.0, 1.0}


# --- the cases, one test each -------------------------------------------------------------


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_error_classes_are_file_format_errors():
    assert issubclass(cifar10.DataFormatError, FileFormatError)
    assert issubclass(nuswide.ListFormatError, FileFormatError)
    assert issubclass(FileFormatError, ValueError)


@pytest.mark.parametrize("cut", [0.5, 0.99, 10])
def test_truncated_npz(tmp_path, cut):
    data = VALID_NPZ[1]
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * cut) if cut < 1 else cut])
    with pytest.raises(FileFormatError) as info:
        user.load_npz(path)
    assert one_line(info).startswith(f"{path}: not a readable .npz (BadZipFile")


def test_damaged_member_of_an_npz_is_named(tmp_path):
    data = bytearray(VALID_NPZ[0])
    start = data.index(b"x_db.npy") + 100  # inside x_db's array data, past its .npy header
    data[start] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    damaged = r"flipped.npz: 'x_db' is (damaged|not a readable .npy array) \(BadZipFile: Bad CRC-32"
    with pytest.raises(FileFormatError, match=damaged):
        user.load_npz(tmp_path / "flipped.npz")


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _header_claiming(shape, descr="|u1"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_npz_claiming_200_gb_is_refused_before_allocating(tmp_path):
    members = {k + ".npy": _npy_bytes(v) for k, v in _valid_arrays().items()}
    members["x_db.npy"] = _header_claiming((200 * 10**9 // 48, 4, 4, 3)) + bytes(100)
    _zip_with(tmp_path / "huge.npz", members)
    with pytest.raises(FileFormatError) as info:
        user.load_npz(tmp_path / "huge.npz")
    assert one_line(info) == (
        f"{tmp_path / 'huge.npz'}: 'x_db' claims uint8 (4166666666, 4, 4, 3) = 200.0 GB "
        f"but holds 100 bytes; damaged or truncated"
    )


def test_npz_larger_than_the_memory_available_is_refused(tmp_path, monkeypatch):
    (tmp_path / "ok.npz").write_bytes(VALID_NPZ[0])
    monkeypatch.setattr(files, "available_memory", lambda: 300)  # x_db is 9 x 48 = 432 bytes
    with pytest.raises(FileFormatError) as info:
        user.load_npz(tmp_path / "ok.npz")
    assert one_line(info) == (
        f"{tmp_path / 'ok.npz'}: 'x_db' claims uint8 (9, 4, 4, 3) = 432 bytes, more than "
        f"the 300 bytes of memory available; not loading it"
    )
    monkeypatch.setattr(files, "available_memory", lambda: None)  # unknown: no check
    assert len(user.load_npz(tmp_path / "ok.npz").x_db) == 9


def test_available_memory_is_a_plausible_count():
    available = files.available_memory()
    assert available is None or 0 < available < 2**60


@pytest.mark.parametrize(
    "member, message",
    [
        (
            _header_claiming((3,), "|O"),
            r"'y_query' is an object array \(pickled Python objects\); not a plain",
        ),
        (_header_claiming((-3,), "<i8"), r"'y_query' has a negative dimension \(-3,\)"),
        (b"\x93NUMPY\x09\x00" + bytes(20), r"'y_query' is not a readable .npy array \(ValueError"),
        (b"not an npy at all", r"'y_query' is not a readable .npy array"),
    ],
)
def test_damaged_npy_headers_are_named(tmp_path, member, message):
    members = {k + ".npy": _npy_bytes(v) for k, v in _valid_arrays().items()}
    members["y_query.npy"] = member
    _zip_with(tmp_path / "bad.npz", members)
    with pytest.raises(FileFormatError, match=f"bad.npz: {message}"):
        user.load_npz(tmp_path / "bad.npz")


def test_label_of_1e9_is_refused_without_allocating(tmp_path):
    arrays = _valid_arrays()
    arrays["y_labeled"] = np.array([1, 0, 10**9, 2])
    np.savez(tmp_path / "big.npz", **arrays)
    with pytest.raises(FileFormatError) as info:
        user.load_npz(tmp_path / "big.npz")
    assert one_line(info) == (
        f"{tmp_path / 'big.npz'}: 'y_labeled' holds class id 1000000000; class ids "
        f"must be in [0, 65536)"
    )
    with pytest.raises(
        ValueError, match=r"mine: y_labeled holds class id 1000000000; class ids must be in"
    ):
        Split(**dict(arrays, y_labeled=arrays["y_labeled"]), name="mine")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("y_query", np.array([0, -1, 2]), "'y_query' holds class id -1; class ids must be in"),
        ("y_db", np.eye(3, dtype=np.int64)[np.arange(9) % 3] * 2, None),
        ("y_labeled", np.array([0.0, 1.0, 2.0, 0.0]), "'y_labeled' must be int class ids"),
    ],
)
def test_other_bad_labels_are_named(tmp_path, key, value, message):
    arrays = _valid_arrays(multi_hot=value.ndim == 2)
    arrays[key] = value
    np.savez(tmp_path / "bad.npz", **arrays)
    message = message or "'y_db' holds 2; multi-hot labels must be 0 or 1"
    with pytest.raises(FileFormatError, match=f"bad.npz: {message}"):
        user.load_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize("key", ["x_query", "x_db", "x_labeled", "x_unlabeled"])
def test_empty_arrays_in_an_npz_are_named(tmp_path, key):
    arrays = dict(_valid_arrays(), x_unlabeled=np.zeros((2, 4, 4, 3), np.uint8))
    arrays[key] = arrays[key][:0]
    if key != "x_unlabeled":
        arrays["y" + key[1:]] = arrays["y" + key[1:]][:0]
    np.savez(tmp_path / "empty.npz", **arrays)
    with pytest.raises(FileFormatError) as info:
        user.load_npz(tmp_path / "empty.npz")
    assert one_line(info) == (
        f"{tmp_path / 'empty.npz'}: '{key}' is empty (0, 4, 4, 3); every array needs "
        f"at least one image"
    )


def test_empty_sets_in_a_split_are_one_clear_line():
    arrays = _valid_arrays()
    for prefix in ("query", "db", "labeled"):
        parts = dict(
            arrays, **{f"{kind}_{prefix}": arrays[f"{kind}_{prefix}"][:0] for kind in "xy"}
        )
        with pytest.raises(
            ValueError, match=f"^mine: x_{prefix} holds no images; the .* needs at least one$"
        ):
            Split(**parts, name="mine")
    with pytest.raises(ValueError, match="^mine: x_unlabeled holds no images"):
        Split(**arrays, x_unlabeled=arrays["x_db"][:0], name="mine")
    with pytest.raises(ValueError, match="^mine: no images to split$"):
        protocol_split(np.zeros((0, 4, 4, 3), np.uint8), np.zeros(0, np.int64), name="mine")
    with pytest.raises(
        ValueError, match=r"must be uint8 images \(N, H, W, 3\); got uint8 \(3, 0, 4, 3\)"
    ):
        Split(**dict(arrays, x_query=np.zeros((3, 0, 4, 3), np.uint8)), name="mine")


def test_too_small_cifar_folder_is_one_clear_line(tmp_path):
    folder = write_cifar_folder(str(tmp_path / "cifar10"), *fake_cifar_images(120))
    with pytest.raises(ValueError) as info:
        load_data(f"cifar10:{folder}")  # the paper's protocol: 60 / 500 on 12 images per class
    assert one_line(info) == (
        f"{folder}: too few images for the protocol (query_every=60, labeled_per_class=500): "
        "class 0 has 12 images, 1 of them queries, which leaves 11 labeled and no unlabeled "
        "(database) image; every class needs more than 500 images besides its queries (120 images, "
        "2 queries in all)"
    )


@pytest.mark.parametrize(
    "labels, query_every, labeled, needle",
    [
        (
            [0] * 10 + [1] * 3,
            5,
            2,
            "class 1 has 3 images, 1 of them queries, which leaves 2 labeled",
        ),
        ([0] * 10 + [1], 4, 1, "class 1 has 1 images, 0 of them queries, which leaves 1 labeled"),
        ([0] * 10 + [5], 2, 1, "class 5 has 1 images, 1 of them queries, which leaves 0 labeled"),
        ([0] * 10, 0, 1, "query_every must be an int >= 1; received query_every=0"),
        ([0] * 10, 2, 0, "labeled_per_class must be an int >= 1; received labeled_per_class=0"),
    ],
)
def test_protocol_split_refuses_data_too_small(labels, query_every, labeled, needle):
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    with pytest.raises(ValueError) as info:
        protocol_split(
            images,
            np.array(labels),
            query_every=query_every,
            labeled_per_class=labeled,
            name="tiny",
        )
    assert needle in one_line(info)


def _write_png(path, colour=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(np.full((6, 5, 3), colour, np.uint8)))


@pytest.mark.parametrize("content", [b"not an image at all", "header", "pixels", b""])
def test_corrupt_image_in_a_folder_is_named(tmp_path, content):
    for name in ("cat", "dog"):
        for i in range(12):
            _write_png(tmp_path / "pics" / name / f"{i:02d}.png")
    bad = tmp_path / "pics" / "dog" / "07.png"
    at_load = content != "pixels"
    if isinstance(content, str):  # a PNG truncated in its header, or in its pixel data
        content = bad.read_bytes()[:40] if content == "header" else bad.read_bytes()[:-20]
    bad.write_bytes(content)
    if at_load:  # no readable header: named at once, when the folder loads
        with pytest.raises(FileFormatError) as info:
            user.load_folder(tmp_path / "pics", image_size=8)
    else:  # a header and broken pixels: named when a batch reads it (streamed)
        split = user.load_folder(tmp_path / "pics", image_size=8)
        with pytest.raises(FileFormatError) as info:
            split.x_labeled.concatenate(split.x_query).read(batch_size=5)
    assert one_line(info).startswith(f"{bad}: not a decodable image (")


def test_folder_without_images_or_too_small_is_one_clear_line(tmp_path):
    (tmp_path / "pics" / "cat").mkdir(parents=True)
    with pytest.raises(
        ValueError, match=r"pics: no images in class sub-folders .*found classes \['cat'\]"
    ):
        user.load_folder(tmp_path / "pics")
    _write_png(tmp_path / "pics" / "cat" / "a.png")
    split = user.load_folder(tmp_path / "pics")  # a class of one image keeps it: no query
    assert split.x_query is None and len(split.x_labeled) == 1
    with pytest.raises(ValueError, match=r"GPQ needs labeled images of at least 2 classes"):
        check_training_labels(split)
    with pytest.raises(
        ValueError, match=r"pics: too few images for the protocol .* class 0 has 1 images"
    ):
        user.load_folder(tmp_path / "pics", protocol="gpq")


def _training_split(y_labeled, num_classes=None):
    x = np.zeros((len(y_labeled), 4, 4, 3), np.uint8)
    y = np.asarray(y_labeled)
    return Split(
        x_query=x[:1],
        y_query=y[:1],
        x_db=x,
        y_db=y,
        x_labeled=x,
        y_labeled=y,
        num_classes=num_classes,
        name="mine",
    )


@pytest.mark.parametrize("labels", [[3, 3, 3, 3], np.eye(4, dtype=np.uint8)[[1, 1, 1]]])
def test_one_class_training_set_is_refused(labels):
    with pytest.raises(ValueError) as info:
        train_dataset(_training_split(labels, num_classes=4), batch_size=2)
    assert one_line(info) == (
        f"GPQ needs labeled images of at least 2 classes; mine's labeled set "
        f"({len(labels)} images) has 1"
    )


def test_out_of_range_label_in_a_training_batch_is_refused():
    split = _training_split([0, 1, 2, 1])
    split.y_labeled = np.array(
        [0, 1, 3, 1]
    )  # changed after the split was made: 3 is not one of 3 classes
    with pytest.raises(ValueError) as info:
        train_dataset(split, batch_size=2)
    assert one_line(info) == (
        "mine: y_labeled holds class id 3 (labeled image 2); class ids must be in [0, 3) "
        "for num_classes=3"
    )
    split.y_labeled = np.array([0, -1, 2, 1])
    with pytest.raises(ValueError, match=r"holds class id -1 \(labeled image 1\)"):
        train_dataset(split, batch_size=2)
    split.y_labeled = np.eye(5, dtype=np.uint8)[[0, 1, 2, 1]]
    with pytest.raises(ValueError, match="y_labeled has 5 classes per row but num_classes=3"):
        train_dataset(split, batch_size=2)
    with pytest.raises(ValueError, match=r"num_classes=2 but the labels hold class id 2"):
        _training_split([0, 1, 2, 1], num_classes=2)


def test_non_utf8_list_file_names_the_line(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(_valid_list(2) + b"caf\xe9.jpg " + b"0 " * 21 + b"\n")
    with pytest.raises(nuswide.ListFormatError) as info:
        nuswide.read_list(path)
    assert one_line(info) == f"{path}:3: not UTF-8 text (byte 0xe9 at column 4)"
    path.write_bytes(b"\x00" * 50)
    with pytest.raises(
        nuswide.ListFormatError, match="test.txt:1: a NUL byte; not a text list file"
    ):
        nuswide.read_list(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: os.urandom(300),
        lambda: VALID_MATS[0][: len(VALID_MATS[0]) // 2],
        lambda: _mat_bytes({"other": np.eye(2)}),
        lambda: _mat_bytes({cifar10.SIMILARITY_KEY: "text"}),
    ],
)
def test_unreadable_similarity_mat_is_named(tmp_path, make):
    path = tmp_path / "cifar10_Similarity.mat"
    path.write_bytes(make())
    with pytest.raises(cifar10.DataFormatError) as info:
        cifar10.load_similarity(path)
    assert one_line(info).startswith(f"{path}: ")


def _mat_with_bad_type_code(compressed):
    """The sparse similarity .mat with its column pointers' element type code set to 24 (no such
    type)."""
    data = bytearray(VALID_MATS[1])  # uncompressed: header, then one miMATRIX element
    ir = data.index(b"label_Similarity") + 16  # the row indices' tag follows the name
    jc = ir + 8 + struct.unpack_from("<I", data, ir + 4)[0]
    jc += -jc % 8
    data[jc : jc + 4] = struct.pack("<I", 24)
    if not compressed:
        return bytes(data)
    packed = zlib.compress(bytes(data[128:]))
    return bytes(data[:128]) + struct.pack("<II", 15, len(packed)) + packed


@pytest.mark.parametrize("compressed", [False, True])
def test_bad_element_type_in_a_mat_is_refused_not_a_crash(tmp_path, compressed):
    """scipy's compiled reader looks type codes up without a bounds check: this file crashes it
    (SIGSEGV)."""
    path = tmp_path / "cifar10_Similarity.mat"
    path.write_bytes(_mat_with_bad_type_code(compressed))
    code = (
        "from gpq_keras.data import cifar10\n"
        f"try:\n    cifar10.load_similarity({str(path)!r})\n"
        "except cifar10.DataFormatError as exc:\n    print(exc)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]  # -11 if scipy were reached
    assert run.stdout.strip() == (
        f"{path}: not a readable .mat file (ValueError: part 2 of 'label_Similarity' "
        f"has element type 24, not a number type)"
    )


def test_out_of_range_sparse_indices_in_a_mat_are_refused(tmp_path):
    data = bytearray(VALID_MATS[1])
    ir = data.index(b"label_Similarity") + 16
    data[ir + 12 : ir + 16] = struct.pack("<i", 54529)  # the second row index, of 3 rows
    path = tmp_path / "cifar10_Similarity.mat"
    path.write_bytes(bytes(data))
    with pytest.raises(
        cifar10.DataFormatError, match=r"mat file \(ValueError: indices must be < 3\)"
    ):
        cifar10.load_similarity(path)


def test_dense_similarity_mat_larger_than_memory_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "cifar10_Similarity.mat"
    path.write_bytes(VALID_MATS[2])  # dense double (3, 5): 120 bytes
    monkeypatch.setattr(files, "available_memory", lambda: 100)
    with pytest.raises(
        cifar10.DataFormatError,
        match=r"'label_Similarity' claims a dense double matrix "
        r"\(3, 5\) = 120 bytes, more than the 100 bytes",
    ):
        cifar10.load_similarity(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda b: b.update({b"labels": [0, 1, b"x"]}),
            "'labels' must be a list of 3 int class ids",
        ),
        (
            lambda b: b.update({b"labels": [0, 1, 2**70]}),
            "'labels' must be a list of 3 int class ids",
        ),
        (
            lambda b: b.update({b"labels": [0, [1, 2], 2]}),
            "'labels' must be a list of 3 int class ids",
        ),
        (lambda b: b.update({b"labels": {0: 1}}), "3 images but 'labels' of type dict"),
        (lambda b: b.update({b"data": [1, 2, 3]}), r"'data' must be uint8 \(N, 3072\); got list"),
    ],
)
def test_cifar_batch_with_bad_values_is_named(tmp_path, change, message):
    batch = _valid_batch()
    change(batch)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(cifar10.DataFormatError, match=f"data_batch_1: {message}"):
        cifar10.read_batch(path)


def test_cifar_pickle_cannot_allocate_from_an_array_placeholder(tmp_path):
    data = pickle.dumps(_valid_batch(), protocol=2)
    assert data.count(b"K\x00\x85") == 1  # _reconstruct(ndarray, (0,), b"b"): BININT1 0, TUPLE1
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        data.replace(b"K\x00\x85", b"J\x00\x00\x00\x40\x85")
    )  # (2**30,) instead of (0,)
    with pytest.raises(
        cifar10.DataFormatError, match=r"unexpected array placeholder ndarray \(1073741824,\)"
    ):
        cifar10.read_batch(path)


def test_cifar_pickle_with_a_huge_memo_index_is_refused_at_once(tmp_path):
    """Found by the fuzz suite: LONG_BINPUT 0x06550255 kept the C unpickler busy for 40 s and
    850 MB."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        b"\x80\x02}q\x00(U\x0bbatch_labelr\x01U\x02U\x06l{\xec.\xce@q\x03]q\x04(K\x00K\x02K\x01eU\x04"
        b"dataq\x05cnumpy.core.multiarray\n_reconstruc"
    )
    with (
        time_limit(5),
        pytest.raises(cifar10.DataFormatError, match="data_batch_1: not a CIFAR-10 python batch"),
    ):
        cifar10.read_batch(path)


# --- image files into the reader (read_images, open_regular) --------------------------------------


def _valid_images():
    """Small valid files of each format tf.io.decode_image reads (Pillow writes them)."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


VALID_IMAGES = _valid_images()
FUZZ_MAX_PIXELS = 4096  # a mutated header may declare any size: nothing large is ever decoded


def _read_one_image(path):
    from gpq_keras.data.images import read_images

    got = read_images([str(path)], 4, max_pixels=FUZZ_MAX_PIXELS)
    assert got.images.shape == (1, 4, 4, 3) and got.kept.tolist() == [0] and not got.skipped
    skipping = read_images([str(path)] * 2, 4, max_pixels=FUZZ_MAX_PIXELS, skip_unreadable=True)
    np.testing.assert_array_equal(skipping.images, np.concatenate([got.images] * 2))
    return got


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@settings(FUZZ, max_examples=60, deadline=20000)
@given(data=st.one_of(st.binary(max_size=400), mutations(VALID_IMAGES)))
def test_fuzz_image_files_into_read_images(scratch, data):
    """Random bytes, and PNG / JPEG / GIF / BMP / WebP files truncated or with flipped, inserted
    or deleted bytes (biased to their headers): decoded, or one line naming the file."""
    from gpq_keras.data.images import read_images

    path = scratch / "image.png"
    if load_or_refuse(_read_one_image, path, data) is None:  # refused: skipped and listed too
        got = read_images([str(path)], 4, max_pixels=FUZZ_MAX_PIXELS, skip_unreadable=True)
        assert got.images.shape == (0, 4, 4, 3) and [p for p, _ in got.skipped] == [str(path)]


@pytest.mark.large  # property-based fuzzing: in `make test`, not `make test-fast`
@settings(FUZZ, max_examples=60, deadline=5000)
@given(
    name=st.binary(min_size=1, max_size=40).filter(
        lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
    ),
    content=st.binary(max_size=64),
)
def test_fuzz_file_names_into_open_regular(scratch, name, content):
    """Any file name the OS takes (bytes that are not UTF-8, newlines, escapes) is opened as
    given and shown on one line; the same file behind a FIFO's name is refused without
    blocking."""
    folder = os.path.join(os.fsencode(scratch), b"names")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(content)
    try:
        listed = [os.path.join(os.fsdecode(folder), n) for n in os.listdir(os.fsdecode(folder))]
        (text,) = listed  # str, with surrogate escapes for the bytes that are not UTF-8
        with time_limit(HANG_SECONDS), files.open_regular(text) as fh:
            assert fh.read() == content
        shown = files.display_path(text)
        assert shown == files.display_path(path)
        assert not any(
            c in "\n\r\t" or 0xD800 <= ord(c) <= 0xDFFF or ord(c) < 32 or ord(c) == 127
            for c in shown
        ), shown
    finally:
        os.remove(path)
    os.mkfifo(path)
    try:
        with time_limit(HANG_SECONDS), pytest.raises(files.UnreadableFile) as info:
            files.open_regular(os.fsdecode(path))
        assert str(info.value).endswith(": a FIFO (named pipe), not a regular file")
        assert "\n" not in str(info.value)
    finally:
        os.remove(path)
