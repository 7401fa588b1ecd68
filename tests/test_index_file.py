"""The `.npz` index file: round trips, the checksum, versions 1 to 4 and every refused key."""

import os

import numpy as np
import pytest
from retrieval_fakes import named_index

from gpq_keras.files import FileFormatError
from gpq_keras.retrieval import PQIndex, checksum, pack_codes


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("labels", ["int", "multi", None])
def test_save_load_round_trip(rng, tmp_path, labels):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    index = PQIndex(z, 4, mode="consistent")
    lab = {
        "int": rng.integers(0, 10, 60),
        "multi": rng.integers(0, 2, (60, 5)).astype(np.uint8),
        None: None,
    }[labels]
    index.add(rng.standard_normal((60, 12)).astype(np.float32), ids=np.arange(60) + 7, labels=lab)
    path = tmp_path / "sub" / "db.npz"
    index.save(path)
    assert os.listdir(tmp_path / "sub") == ["db.npz"]  # no temporary file left
    back = PQIndex.load(path)
    assert (back.mode, back.num_subspaces, back.ntotal) == ("consistent", 4, 60)
    np.testing.assert_array_equal(back.codebook, index.codebook)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.ids, index.ids)
    if lab is None:
        assert back.labels is None
    else:
        np.testing.assert_array_equal(back.labels, lab)
        assert back.labels.dtype == lab.dtype
    queries = rng.standard_normal((4, 12)).astype(np.float32)
    for a, b in zip(back.search(queries, 9), index.search(queries, 9)):
        np.testing.assert_array_equal(a, b)
    with np.load(path) as data:  # codes are stored packed: M * log2(K) = 16 bits per item
        assert data["codes"].shape == (60, 2)


def rewrite(path, reseal=True, **changes):
    """Change keys of an index file; `reseal` recomputes the checksum (a consistent file with a bad
    key)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    if reseal and "checksum" in arrays:
        arrays["checksum"] = np.array(checksum(arrays))
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"format_version": np.array(5)},
            "'format_version' is 5; this gpq_keras reads versions 1 to 4",
        ),
        (
            {"format_version": np.array(0)},
            "'format_version' is 0; this gpq_keras reads versions 1 to 4",
        ),
        ({"format_version": None}, "missing key 'format_version'"),
        ({"format": np.array("something.else")}, "key 'format'"),
        ({"codes": np.zeros((6, 3), np.uint8)}, r"key 'codes' must be uint8 \(N, 2\)"),
        ({"codes": np.zeros((6, 2), np.int64)}, "key 'codes' must be uint8"),
        ({"codebook": np.zeros((16, 12), np.float64)}, "key 'codebook' must be float32"),
        ({"codebook": np.zeros((16, 10), np.float32)}, "key 'codebook'.*divisible"),
        ({"ids": np.arange(5)}, r"key 'ids' must be int64 \(6,\)"),
        ({"mode": np.array("cosine")}, "key 'mode'"),
        ({"labels": np.zeros(4, np.int64)}, "key 'labels'"),
        ({"num_subspaces": np.array(0)}, "key 'num_subspaces'"),
        ({"ids": np.array([0, 1, -1, 3, 4, 5])}, "negative id"),
        ({"ids": np.array([0, 1, 2, 3, 4, 4])}, "duplicated ids"),
        (
            {"codebook": np.zeros((8, 12), np.float32)},
            "key 'codebook' has 8 rows, but nbits=4 needs 16",
        ),
        ({"checksum": None}, "missing key 'checksum'"),
    ],
)
def test_load_refuses_bad_files(rng, tmp_path, changes, message):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    rewrite(path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        PQIndex.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_corrupt_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(FileFormatError, match="garbage.npz: not a readable .npz"):
        PQIndex.load(garbage)
    index = PQIndex(np.eye(16, 12, dtype=np.float32), 4).add(np.zeros((100, 4), np.uint8))
    index.save(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated.npz: not a readable .npz"):
        PQIndex.load(tmp_path / "truncated.npz")
    with pytest.raises(FileNotFoundError, match="index file not found"):
        PQIndex.load(tmp_path / "absent.npz")


def test_save_keeps_the_old_file_when_writing_fails(rng, tmp_path, monkeypatch):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4).add(
        np.zeros((3, 4), np.uint8)
    )
    index.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["db.npz"]


def test_a_flipped_byte_is_caught_by_the_checksum(rng, tmp_path):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    with np.load(path) as data:
        codes = data["codes"].copy()
    codes[2, 1] ^= 0x10
    rewrite(path, reseal=False, codes=codes)
    with pytest.raises(FileFormatError, match="checksum does not match"):
        PQIndex.load(path)


def test_a_version_1_file_still_loads(rng, tmp_path):
    path = tmp_path / "v1.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4, mode="consistent")
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    rewrite(
        path,
        reseal=False,
        format_version=np.array(1),
        nbits=None,
        checksum=None,
        model_fingerprint=None,
    )
    back = PQIndex.load(path)
    np.testing.assert_array_equal(back.codes, index.codes)
    assert back.mode == "consistent" and back.model_fingerprint is None


def _version_2_arrays(index):
    """The arrays `save` wrote in format version 2 (no sources, no class names)."""
    arrays = {
        "format": np.array("gpq_keras.PQIndex"),
        "format_version": np.array(2, np.int64),
        "mode": np.array(index.mode),
        "num_subspaces": np.array(index.num_subspaces, np.int64),
        "nbits": np.array(index.nbits, np.int64),
        "codebook": index.codebook,
        "codes": pack_codes(index.codes, index.nbits),
        "ids": np.asarray(index.ids),
        "model_fingerprint": np.array(""),
        "labels": index.labels,
    }
    arrays["checksum"] = np.array(checksum(arrays))
    return arrays


def test_a_version_2_file_still_loads(rng, tmp_path):
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4, mode="consistent")
    index.add(
        rng.standard_normal((6, 12)).astype(np.float32),
        ids=np.arange(6) * 5,
        labels=np.arange(6) % 2,
    )
    path = tmp_path / "v2.npz"
    np.savez(path, **_version_2_arrays(index))
    back = PQIndex.load(path)
    assert (back.mode, back.ntotal, back.sources, back.class_names) == ("consistent", 6, None, None)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.ids, index.ids)
    np.testing.assert_array_equal(back.labels, index.labels)
    # Keys of later versions mean nothing in a version 2 file: ignored as before, even malformed.
    arrays = _version_2_arrays(index)
    arrays["sources"], arrays["class_names"] = np.zeros(2, np.int64), np.array(["a", "a"])
    arrays["checksum"] = np.array(checksum(arrays))
    np.savez(path, **arrays)
    back = PQIndex.load(path)
    assert back.sources is None and back.class_names is None and back.ntotal == 6


# --- sources and class names ----------------------------------------------------------------------


def test_sources_and_class_names_round_trip_without_pickle(rng, tmp_path):
    index = named_index(rng)
    want = np.array([f"images/{i:03d}.png" for i in range(12)])
    assert index.sources.dtype.kind == "U" and index.sources.shape == (12,)
    np.testing.assert_array_equal(index.sources, want)
    assert index.class_names == ["cat", "dog", "bird"]
    with pytest.raises(ValueError, match="read-only"):
        index.sources[0] = "x"
    path = tmp_path / "db.npz"
    index.save(path)
    with np.load(path, allow_pickle=False) as data:  # every key is a plain array
        arrays = {key: data[key] for key in data.files}
    assert int(arrays["format_version"]) == 3
    assert arrays["sources"].dtype.kind == "U" and arrays["class_names"].dtype.kind == "U"
    np.testing.assert_array_equal(arrays["class_names"], ["cat", "dog", "bird"])
    back = PQIndex.load(path)
    np.testing.assert_array_equal(back.sources, want)
    assert back.sources.dtype.kind == "U"
    assert back.class_names == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(back.labels, index.labels)
    np.testing.assert_array_equal(back.codes, index.codes)
    # An index without them writes neither key and loads None.
    plain = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4).add(
        np.zeros((3, 4), np.uint8)
    )
    plain.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as data:
        assert "sources" not in data.files and "class_names" not in data.files
    back = PQIndex.load(tmp_path / "plain.npz")
    assert back.sources is None and back.class_names is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"sources": np.array(["a", "b"])},
            r"key 'sources' must be unicode strings \(6,\), got <U1 \(2,\)",
        ),
        ({"sources": np.array([["a"]] * 6)}, r"key 'sources' must be unicode strings \(6,\)"),
        ({"sources": np.arange(6)}, "key 'sources' must be unicode"),
        ({"sources": np.array([b"a"] * 6)}, "key 'sources' must be unicode"),
        (
            {"class_names": np.array([["a", "b", "c"]])},
            r"key 'class_names' must be unicode strings \(classes,\)",
        ),
        ({"class_names": np.arange(3)}, "key 'class_names' must be unicode"),
        (
            {"class_names": np.array(["a", "b", "a"])},
            "key 'class_names': `class_names` holds duplicated names",
        ),
        (
            {"class_names": np.array(["a", "", "c"])},
            "key 'class_names': `class_names` holds an empty name",
        ),
        ({"class_names": np.array(["a", "b"])}, "key 'class_names': .*class ids 0..2"),
        ({"class_names": np.zeros(0, "U1")}, "key 'class_names': .*at least one class"),
    ],
)
def test_load_refuses_bad_sources_and_class_names(rng, tmp_path, changes, message):
    path = tmp_path / "db.npz"
    index = PQIndex(
        rng.standard_normal((16, 12)).astype(np.float32), 4, class_names=["a", "b", "c"]
    )
    index.add(
        rng.standard_normal((6, 12)).astype(np.float32),
        labels=np.arange(6) % 3,
        sources=[f"{i}.png" for i in range(6)],
    ).save(path)
    rewrite(path, **changes)  # resealed: only the key's own check can catch it
    with pytest.raises(FileFormatError, match=message) as info:
        PQIndex.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_class_names_that_do_not_fit_multi_hot_labels(rng, tmp_path):
    path = tmp_path / "db.npz"
    index = PQIndex(
        rng.standard_normal((16, 12)).astype(np.float32), 4, class_names=["a", "b", "c"]
    )
    index.add(np.zeros((4, 4), np.uint8), labels=np.ones((4, 3), np.uint8)).save(path)
    assert PQIndex.load(path).class_names == ["a", "b", "c"]
    rewrite(path, class_names=np.array(["a", "b"]))
    with pytest.raises(
        FileFormatError, match="key 'class_names': .*multi-hot labels have 3 columns"
    ):
        PQIndex.load(path)
