"""CIFAR-10: the original release's python folder, TensorFlow Datasets, and
`cifar10_Similarity.mat`.

```python
split = cifar10.load_split("cifar10/")                       # the python batches of the original
split = cifar10.load_split(from_tfds=True, data_dir="~/tfds")  # or TensorFlow Datasets, offline
```

Both give the paper's protocol (`protocol_split` with query_every=60, labeled_per_class=500): 1,000
queries, 5,000 labeled images and 54,000 unlabeled ones that are also the retrieval database. Images
stay uint8 (N, 32, 32, 3); a `GPQ` normalises them with the original's channel statistics
(`gpq_keras.image_converter`).
"""

import os
import pickle
import warnings

import numpy as np

from gpq_keras.data.labels import relevance
from gpq_keras.data.split import MAX_CLASSES, protocol_split
from gpq_keras.files import (
    FileFormatError,
    atomic_path,
    check_mat5,
    check_memory,
    one_line,
    restricted_load,
)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/" + ARCHIVE_NAME
SIMILARITY_KEY = "label_Similarity"


class DataFormatError(FileFormatError):
    """A CIFAR-10 data file exists but is not what it claims to be (wrong types, truncated, bad
    shapes)."""


def load_pickle(path):
    """Load one CIFAR-10 python batch (a dict) with `gpq_keras.files.RestrictedUnpickler`.

    Raises FileNotFoundError if the file is missing and `DataFormatError` (a ValueError) naming the
    file if it is truncated, is not a pickle, or holds anything but dicts, lists, bytes, str, ints
    and arrays.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        value = restricted_load(data, dict)
    except (pickle.UnpicklingError, EOFError) as exc:
        what = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc) else "refused"
        message = " ".join(str(exc).split())
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch ({what}: {message})") from None
    except Exception as exc:  # malformed opcodes raise all sorts of errors
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch ({one_line(exc)})") from None
    return value


def _get(batch, key, path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataFormatError(f"{path}: no '{key}' entry (keys: {sorted(map(repr, batch))})")


def read_batch(path):
    """One python batch -> uint8 images (N, 32, 32, 3) and int64 labels (N,)."""
    batch = load_pickle(path)
    data, labels = _get(batch, "data", path), _get(batch, "labels", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != int(np.prod(IMAGE_SHAPE))
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' must be uint8 (N, 3072); got {what}")
    shape = (
        labels.shape
        if isinstance(labels, np.ndarray)
        else (len(labels),)
        if isinstance(labels, list)
        else None
    )
    if shape != (len(data),):
        what = (
            f"labels of shape {shape}"
            if shape is not None
            else f"'labels' of type {type(labels).__name__}"
        )
        raise DataFormatError(f"{path}: {len(data)} images but {what}")
    try:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iub" or labels.shape != (len(data),):
            raise ValueError(f"{labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataFormatError(
            f"{path}: 'labels' must be a list of {len(data)} int class ids ({exc})"
        ) from None
    # Rows are channel-major (3 x 32 x 32): red plane, green plane, blue plane.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_label_names(directory):
    """The class names from `batches.meta` (str)."""
    path = os.path.join(os.fspath(directory), META_FILE)
    names = _get(load_pickle(path), "label_names", path)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataFormatError(
            f"{path}: 'label_names' must be a list of names; got {type(names).__name__}"
        )
    if not 1 <= len(names) <= MAX_CLASSES:
        raise DataFormatError(
            f"{path}: 'label_names' holds {len(names)} names; expected 1 to {MAX_CLASSES}"
        )
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: a name in 'label_names' is not UTF-8 ({exc})") from None


def read_folder(directory):
    """The original release's `cifar10/` folder -> (images uint8 (60000, 32, 32, 3), labels, names).

    The order is the original's: data_batch_1..5, then test_batch.
    """
    images, labels, names, _ = _read_folder(directory)
    return images, labels, names


def _read_folder(directory):
    """`read_folder` and the number of training images (those of data_batch_1..5)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CIFAR-10 folder not found: {directory}")
    names = read_label_names(directory)
    parts = []
    for file in TRAIN_FILES + (TEST_FILE,):
        path = os.path.join(directory, file)
        images, labels = read_batch(path)
        bad = (labels < 0) | (labels >= len(names))
        if bad.any():
            raise DataFormatError(
                f"{path}: label {labels[bad][0]} (image {int(np.argmax(bad))}) outside the "
                f"{len(names)} classes of {META_FILE}"
            )
        parts.append((images, labels))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, names, sum(len(p[1]) for p in parts[:-1])


# --------------------------------------------------------------------------------------------------
# TensorFlow Datasets
# --------------------------------------------------------------------------------------------------


def default_tfds_dir():
    """TensorFlow Datasets' data directory: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def _no_archive(data_dir, archive, why):
    """The one-line FileNotFoundError of a missing data set: why, and where to put the archive."""
    return FileNotFoundError(
        f"tfds:cifar10: no prepared data set in {data_dir} and {why}; download "
        f"{ARCHIVE_URL} and put it at {archive}"
    )


def read_tfds(data_dir=None, manual_dir=None, download=False):
    """CIFAR-10 through `tfds.load("cifar10")` -> (images uint8 (60000, 32, 32, 3), labels, names).

    Train then test, each back in the original's order (tfds shuffles records; its `id` keeps the
    index), so the split equals the one from the python folder.

    Offline (the default): put `cifar-10-binary.tar.gz` into `manual_dir` (default
    `DATA_DIR/downloads/manual`, tfds' own convention); tfds checks it against its registered
    checksum and prepares the data set once. Nothing here probes the network.

    Args:
        data_dir: tfds' data directory. Default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
        manual_dir: where a manually downloaded archive lies. Default `data_dir/downloads/manual`.
        download: False (default) never goes online; True lets tfds download the archive when the
            data set is not prepared and the archive is not in `manual_dir` (tfds retries before
            giving up, which can take minutes without a network).

    Raises:
        FileNotFoundError: one line saying where to put the archive, when the data set is not
            prepared and the archive is not in `manual_dir`: at once with download=False; with
            download=True when tfds' download fails, with its reason.
        DataFormatError: the archive in `manual_dir` is not the official one (checksum).
    """
    images, labels, names, _ = _read_tfds(data_dir, manual_dir, download)
    return images, labels, names


def _read_tfds(data_dir=None, manual_dir=None, download=False):
    """`read_tfds` and the number of training images (tfds' "train" split)."""
    if download not in (True, False):
        raise ValueError(f"download must be True or False; received download={download!r}")
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
    from tensorflow_datasets.core.download.util import DownloadError

    data_dir = os.path.expanduser(os.fspath(data_dir or default_tfds_dir()))
    manual_dir = os.path.expanduser(
        os.fspath(manual_dir or os.path.join(data_dir, "downloads", "manual"))
    )
    builder = tfds.builder("cifar10", data_dir=data_dir)
    if not builder.is_prepared():
        archive = os.path.join(manual_dir, ARCHIVE_NAME)
        if os.path.isfile(archive):
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
            try:
                builder.download_and_prepare(download_config=config)
            except NonMatchingChecksumError:
                raise DataFormatError(
                    f"{archive}: not the official CIFAR-10 archive (checksum differs "
                    f"from {ARCHIVE_URL})"
                ) from None
        elif not download:
            raise _no_archive(data_dir, archive, "downloading is off (download=False)")
        else:
            try:
                builder.download_and_prepare()
            # DownloadError: an HTTP status other than 200; OSError: requests' ConnectionError,
            # Timeout and the other RequestExceptions, urllib's URLError; a checksum mismatch of the
            # download.
            except (DownloadError, OSError, NonMatchingChecksumError) as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                raise _no_archive(data_dir, archive, f"the download failed ({reason})") from None
    images, labels = [], []
    for part in tfds.load(
        "cifar10", split=["train", "test"], data_dir=data_dir, batch_size=10000, download=False
    ):
        batches = list(tfds.as_numpy(part))
        ids = np.concatenate([b["id"] for b in batches]).astype(str)
        order = np.argsort(ids, kind="stable")
        images.append(np.concatenate([b["image"] for b in batches]).astype(np.uint8)[order])
        labels.append(np.concatenate([b["label"] for b in batches]).astype(np.int64)[order])
    names = list(builder.info.features["label"].names)
    return np.concatenate(images), np.concatenate(labels), names, len(labels[0])


# --------------------------------------------------------------------------------------------------
# The paper's split and cifar10_Similarity.mat
# --------------------------------------------------------------------------------------------------


def _check_source(function, directory, from_tfds):
    if from_tfds == (directory is not None):
        raise ValueError(
            f"{function}: pass either a CIFAR-10 folder or from_tfds=True; received "
            f"directory={directory!r}, from_tfds={from_tfds!r}"
        )


def read_pool(directory=None, *, from_tfds=False, data_dir=None, manual_dir=None, download=False):
    """All of CIFAR-10 as one `gpq_keras.data.protocols.Pool`: images uint8 (60000, 32, 32, 3),
    int64 labels, the 10 class names, in the original's order (data_batch_1..5, test_batch; tfds:
    train, test), `train_count` 50,000 (the training images come first; the rest are the test
    images; None when either is empty), named "cifar10". The protocols (`apply_protocol`) split it.

    Args as in `load_split`: the python batches' `directory`, or `from_tfds=True` (`data_dir`,
    `manual_dir`, `download` as in `read_tfds`).
    """
    from gpq_keras.data.protocols import Pool

    _check_source("read_pool", directory, from_tfds)
    if from_tfds:
        images, labels, names, train_count = _read_tfds(data_dir, manual_dir, download)
    else:
        images, labels, names, train_count = _read_folder(directory)
    if not 0 < train_count < len(labels):
        train_count = None  # no train/test division to speak of
    return Pool(images, labels, len(names), tuple(names), "cifar10", train_count)


def load_split(
    directory=None,
    *,
    from_tfds=False,
    data_dir=None,
    manual_dir=None,
    download=False,
    similarity=None,
    query_every=60,
    labeled_per_class=500,
):
    """CIFAR-10 split as the paper does: 1,000 queries, 5,000 labeled, 54,000 unlabeled = database.

    Args:
        directory: the original release's `cifar10/` folder of python batches.
        from_tfds: read through TensorFlow Datasets instead (`data_dir`, `manual_dir`, `download` as
            in `read_tfds`; offline unless download=True).
        similarity: optional path of `cifar10_Similarity.mat`; checked against the split's labels
            (`check_similarity`), a ValueError if it does not match.
        query_every, labeled_per_class: the protocol (60 and 500 in the paper).

    The split's protocol is "gpq"; other protocols: `read_pool` and
    `gpq_keras.data.protocols.apply_protocol`.
    """
    _check_source("load_split", directory, from_tfds)
    pool = read_pool(
        directory, from_tfds=from_tfds, data_dir=data_dir, manual_dir=manual_dir, download=download
    )
    split = protocol_split(
        pool.images,
        pool.labels,
        query_every=query_every,
        labeled_per_class=labeled_per_class,
        name="tfds:cifar10" if from_tfds else os.fspath(directory),
    )  # named in errors
    split.name = "cifar10"
    split.num_classes = pool.num_classes
    split.class_names = pool.class_names
    if similarity is not None:
        check_similarity(load_similarity(similarity), split.y_query, split.y_db, source=similarity)
    return split


def similarity_matrix(y_query, y_db, chunk=1024):
    """Sparse 0/1 relevance (queries, database) as float64 CSR: same class, or >= 1 shared label.

    The relevance is `gpq_keras.data.labels.relevance`, taken `chunk` queries at a time so that only
    a (chunk, database) dense block is held at once. Labels of two kinds raise its ValueError.
    """
    from scipy import sparse

    y_query, y_db = np.asarray(y_query), np.asarray(y_db)
    blocks = [
        sparse.csr_matrix(relevance(y_query[start : start + chunk], y_db), dtype=np.float64)
        for start in range(0, len(y_query), chunk)
    ]
    if not blocks:
        relevance(y_query, y_db)  # the same checks for no queries
        return sparse.csr_matrix((0, len(y_db)), dtype=np.float64)
    return sparse.vstack(blocks, format="csr", dtype=np.float64)


def save_similarity(path, y_query, y_db):
    """Write `cifar10_Similarity.mat` (`label_Similarity`, sparse) for these labels, atomically."""
    import scipy.io

    path = os.fspath(path)
    matrix = similarity_matrix(y_query, y_db)
    with atomic_path(path, suffix=".mat") as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, {SIMILARITY_KEY: matrix}, do_compression=True)
    return matrix


def load_similarity(path):
    """Read `label_Similarity` from a `.mat` file as a 0/1 CSR matrix (queries, database).

    Raises FileNotFoundError for a missing file and `DataFormatError` naming the file for one that
    scipy cannot read, that lacks the variable, holds something but a 2-D numeric or sparse matrix
    there, whose dense matrix would not fit into the memory available, or whose sparse indices are
    out of range. A MAT 5 file's elements are checked before scipy reads them
    (`gpq_keras.files.check_mat5`): scipy's compiled reader trusts their type codes and crashes the
    process on a damaged one.
    """
    import scipy.io
    from scipy import sparse

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"similarity file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about odd headers, then raises or reads
            version = scipy.io.matlab.matfile_version(path)[0]
            variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(path)}
    except (
        Exception
    ) as exc:  # scipy raises many types for damaged files: ValueError, TypeError, OSError...
        raise DataFormatError(f"{path}: not a readable .mat file ({one_line(exc)})") from None
    if SIMILARITY_KEY not in variables:
        raise DataFormatError(f"{path}: no '{SIMILARITY_KEY}' variable (found {sorted(variables)})")
    shape, kind = variables[SIMILARITY_KEY]
    if kind not in _MAT_ITEMSIZE and kind != "sparse" or len(shape) != 2:
        raise DataFormatError(
            f"{path}: '{SIMILARITY_KEY}' must be a 2-D numeric or sparse matrix; got "
            f"{kind} {tuple(shape)}"
        )
    if kind != "sparse":
        check_memory(
            int(np.prod(shape, dtype=object)) * _MAT_ITEMSIZE[kind],
            f"{path}: '{SIMILARITY_KEY}'",
            f"a dense {kind} matrix {tuple(shape)}",
            DataFormatError,
        )
    if version == 1:
        with open(path, "rb") as f:
            check_mat5(path, f.read(), SIMILARITY_KEY, DataFormatError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matrix = scipy.io.loadmat(path, variable_names=[SIMILARITY_KEY])[SIMILARITY_KEY]
        if sparse.issparse(matrix):
            matrix.check_format(
                full_check=True
            )  # indices in range, before any operation trusts them
        matrix = sparse.csr_matrix(matrix)
    except MemoryError:
        raise DataFormatError(f"{path}: '{SIMILARITY_KEY}' does not fit into memory") from None
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable .mat file ({one_line(exc)})") from None
    return (matrix != 0).astype(np.float64).tocsr()


_MAT_ITEMSIZE = {
    "double": 8,
    "single": 4,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "logical": 1,
}


def check_similarity(matrix, y_query, y_db, source="similarity matrix"):
    """Raise ValueError unless `matrix` (queries, database) equals the relevance the labels give."""
    from scipy import sparse

    expected = similarity_matrix(y_query, y_db)
    matrix = sparse.csr_matrix(matrix)
    if matrix.shape != expected.shape:
        raise ValueError(
            f"{source}: shape {matrix.shape} does not match this split's "
            f"{expected.shape[0]} queries x {expected.shape[1]} database items"
        )
    diff = (matrix != 0).astype(np.int8) - (expected != 0).astype(np.int8)
    diff.eliminate_zeros()
    if diff.nnz:
        rows, cols = diff.nonzero()
        raise ValueError(
            f"{source}: {diff.nnz} of {matrix.shape[0] * matrix.shape[1]} entries differ from the "
            f"labels of this split (first at query {rows[0]}, database item {cols[0]}); it was "
            "made for another order or data (the original sorts unstably). Leave it out: "
            "relevance comes from the labels"
        )
