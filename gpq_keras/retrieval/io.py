"""The PQIndex file (faiss' `impl/index_read.cpp`, `index_write.cpp`): an `.npz` of plain arrays
with a SHA-256 checksum, format versions 1 to 4.

Keys: format, format_version, mode, num_subspaces, nbits, codebook float32 (2**nbits, M*d), codes
uint8 packed (N, ceil(M*nbits / 8)), ids int64 (N,), labels when present, sources unicode (N,) and
class_names unicode (classes,) when present, model_fingerprint (or ""), and checksum. Version 2
added nbits, the model fingerprint and the checksum; version 3 sources and class names; version 4
file_stats int64 (N, 2) (each source's file size in bytes and mtime in ns when it was encoded, -1
unknown; with sources only) and next_id int64 (the id the next added item gets, past the removed
ones; only when the index assigns its ids and they are not 0..N-1).

A file is written in version 4 only when it holds one of those keys, else in version 3, which older
gpq_keras reads. A file without file_stats (versions 1 to 3) loads with every stat unknown: `gpq
index add --update` then re-encodes those files once (see `PQIndex.add_files`).

Sources are whatever `add` was given: `add_files` stores absolute paths (since issue 22); files
written before hold paths relative to where they were built, which `PQIndex.resolve_sources`
resolves against the index file's folder (`PQIndex.folder`, recorded by `read_index`).
"""

import hashlib
import os
import zipfile

import numpy as np

from gpq_keras.config import RETRIEVAL_MODES
from gpq_keras.files import FileFormatError, atomic_path, display_path, read_npz
from gpq_keras.retrieval.codes import pack_codes, unpack_codes

FORMAT_VERSION = 4
FORMAT_NAME = "gpq_keras.PQIndex"


def checksum(arrays):
    """SHA-256 (hex) over the keys, dtypes, shapes and bytes of the arrays {key: array} of an index
    file, its "checksum" key left out."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        if key == "checksum":
            continue
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}:".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")  # a Keras 3 `.keras` zip


def is_pqindex_file(path):
    """Whether the file at `path` is a zip file (a PQIndex `.npz`) rather than a faiss index;
    FileNotFoundError ("index not found: PATH") when there is no such file, `FileFormatError` for a
    Keras model file (`check_not_keras`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index not found: {display_path(path)}")
    with open(path, "rb") as fh:
        if fh.read(2) != b"PK":
            return False
    check_not_keras(path)
    return True


def check_not_keras(path):
    """Raise `FileFormatError` ("PATH: a Keras model file, not a PQIndex (give it as --model)")
    when the zip file at `path` is a Keras archive: Keras' members and no `.npy` array. A zip that
    cannot be read is left to `read_npz` to name."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except Exception:  # a damaged zip: `read_npz` names what is wrong with it
        return
    if names & set(KERAS_MEMBERS) and not any(name.endswith(".npy") for name in names):
        raise FileFormatError(
            f"{display_path(path)}: a Keras model file, not a PQIndex (give it as --model)"
        )


def write_index(index, path):
    """`PQIndex.save`: the index's arrays and their checksum, written atomically."""
    arrays = {
        "format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, np.int64),
        "mode": np.array(index.mode),
        "num_subspaces": np.array(index.num_subspaces, np.int64),
        "nbits": np.array(index.nbits, np.int64),
        "codebook": index.codebook,
        "codes": pack_codes(index.codes, index.nbits),
        "ids": index.ids,
        "model_fingerprint": np.array(index.model_fingerprint or ""),
    }
    if index.labels is not None:
        arrays["labels"] = index.labels
    if index.sources is not None:
        arrays["sources"] = index.sources
    if index.class_names is not None:
        arrays["class_names"] = np.array(index.class_names, dtype=str)
    stats = index.file_stats
    if stats is not None and (stats != -1).any():
        arrays["file_stats"] = np.asarray(stats)
    store = index._store
    if store.auto_ids and not (store.default_ids and store.next_id == index.ntotal):
        arrays["next_id"] = np.array(store.next_id, np.int64)
    if "file_stats" not in arrays and "next_id" not in arrays:
        arrays["format_version"] = np.array(3, np.int64)  # readable by gpq_keras before version 4
    arrays["checksum"] = np.array(checksum(arrays))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def read_index(cls, path):
    """`PQIndex.load` (`cls`: the class to make): every key checked, with the file and the key named
    in the `FileFormatError`."""
    path = os.fspath(path)

    def bad(why):
        return FileFormatError(f"{display_path(path)}: not a valid PQIndex file: {why}")

    def scalar(key, kind):
        value = arrays[key]
        if value.shape != () or value.dtype.kind not in kind:
            raise bad(f"key {key!r} must be a scalar, got {value.dtype} {value.shape}")
        return value.item()

    if os.path.isfile(path):
        check_not_keras(path)
    arrays = read_npz(path, "index file")
    for key in ("format", "format_version", "mode", "num_subspaces", "codebook", "codes", "ids"):
        if key not in arrays:
            raise bad(f"missing key {key!r}")
    if arrays["format"].shape != () or str(arrays["format"]) != FORMAT_NAME:
        raise bad(f"key 'format' is {arrays['format']!r}, expected {FORMAT_NAME!r}")
    version = scalar("format_version", "iu")
    if not 1 <= version <= FORMAT_VERSION:
        raise bad(
            f"key 'format_version' is {version}; this gpq_keras reads versions 1 to "
            f"{FORMAT_VERSION}"
        )
    if version >= 2:
        for key in ("nbits", "model_fingerprint", "checksum"):
            if key not in arrays:
                raise bad(f"missing key {key!r}")
        if scalar("checksum", "U") != checksum(arrays):
            raise bad("the checksum does not match the contents (the file was changed or damaged)")
    mode = scalar("mode", "U")
    if mode not in RETRIEVAL_MODES:
        raise bad(f"key 'mode' must be one of {RETRIEVAL_MODES}, got {mode!r}")
    m = scalar("num_subspaces", "iu")
    if m < 1:
        raise bad(f"key 'num_subspaces' must be positive, got {m}")
    codebook = arrays["codebook"]
    if codebook.dtype != np.float32 or codebook.ndim != 2:
        raise bad(f"key 'codebook' must be float32 (K, M*d), got {codebook.dtype} {codebook.shape}")
    if version >= 2 and codebook.shape[0] != 2 ** scalar("nbits", "iu"):
        raise bad(
            f"key 'codebook' has {codebook.shape[0]} rows, but nbits={arrays['nbits']} needs "
            f"{2 ** int(arrays['nbits'])}"
        )
    try:
        index = cls(codebook, m, mode)
    except ValueError as exc:
        raise bad(f"key 'codebook': {exc}") from None
    codes, ids = arrays["codes"], arrays["ids"]
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != index.code_size:
        raise bad(
            f"key 'codes' must be uint8 (N, {index.code_size}), got {codes.dtype} {codes.shape}"
        )
    n = codes.shape[0]
    if ids.dtype != np.int64 or ids.shape != (n,):
        raise bad(f"key 'ids' must be int64 ({n},), got {ids.dtype} {ids.shape}")
    if n and ids.min() < 0:
        raise bad(
            f"key 'ids' holds a negative id ({ids.min()}); ids are >= 0 (-1 means 'no result')"
        )
    if len(np.unique(ids)) != n:
        raise bad("key 'ids' holds duplicated ids")
    labels = arrays.get("labels")
    if labels is not None and (
        labels.ndim not in (1, 2)
        or labels.shape[0] != n
        or labels.dtype.kind not in ("biuU" if labels.ndim == 1 else "biu")
    ):
        raise bad(
            f"key 'labels' must be ({n},) class ids or ({n}, classes) integer/bool multi-hot, "
            f"got {labels.dtype} {labels.shape}"
        )
    sources = arrays.get("sources") if version >= 3 else None
    if sources is not None and (sources.dtype.kind != "U" or sources.shape != (n,)):
        raise bad(
            f"key 'sources' must be unicode strings ({n},), got {sources.dtype} {sources.shape}"
        )
    names = arrays.get("class_names") if version >= 3 else None
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise bad(
            f"key 'class_names' must be unicode strings (classes,), got {names.dtype} {names.shape}"
        )
    stats = arrays.get("file_stats") if version >= 4 else None
    if stats is not None and (
        sources is None
        or stats.dtype != np.int64
        or stats.shape != (n, 2)
        or (n and stats.min() < -1)
    ):
        raise bad(
            f"key 'file_stats' must be int64 ({n}, 2) sizes and mtimes >= -1 beside 'sources', "
            f"got {stats.dtype} {stats.shape}"
        )
    next_id = None
    if version >= 4 and "next_id" in arrays:
        next_id = scalar("next_id", "i")
        if next_id < (int(ids.max()) + 1 if n else 0):
            raise bad(f"key 'next_id' is {next_id}, not past the largest id")
    unpacked = unpack_codes(codes, index.num_subspaces, index.nbits)
    if n and int(unpacked.max()) >= index.num_codewords:
        raise bad(f"key 'codes' holds an index >= K={index.num_codewords}")
    index.add(unpacked, ids=ids, labels=labels, sources=sources, file_stats=stats)
    if next_id is not None:
        index._store.restore_next_id(next_id)
    if names is not None:
        try:
            index.class_names = names
        except ValueError as exc:
            raise bad(f"key 'class_names': {exc}") from None
    if version >= 2:
        index.model_fingerprint = scalar("model_fingerprint", "U") or None
    index.folder = os.path.dirname(os.path.abspath(path))
    return index
