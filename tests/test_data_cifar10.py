"""CIFAR-10 sources: the python folder (restricted unpickling), TensorFlow Datasets, the split, the
.mat."""

import io
import os
import pickle
import re
import socket
import time

import numpy as np
import pytest
import requests
import scipy.io
from data_fakes import (
    CLASS_NAMES,
    fake_cifar_images,
    image_ids,
    py2_pickle_bytes,
    write_cifar_binary_archive,
    write_cifar_folder,
)
from scipy import sparse

from gpq_keras.data import cifar10, load_data, protocol_split
from gpq_keras.data.cifar10 import DataFormatError
from gpq_keras.data.labels import relevance
from gpq_keras.data.protocols import apply_protocol


@pytest.fixture(scope="module")
def fake():
    return fake_cifar_images(120)


@pytest.fixture
def folder(tmp_path, fake):
    return write_cifar_folder(str(tmp_path / "cifar10"), *fake)


def expected_protocol(labels, query_every, labeled_per_class):
    """The protocol by hand: positions in the original order of queries / labeled / unlabeled."""
    ordered = [
        i for c in range(10) for i in range(len(labels)) if labels[i] == c
    ]  # stable by class
    queries = ordered[::query_every]
    rest = [i for k, i in enumerate(ordered) if k % query_every]
    seen, labeled, unlabeled = {}, [], []
    for i in rest:
        seen[labels[i]] = seen.get(labels[i], 0) + 1
        (labeled if seen[labels[i]] <= labeled_per_class else unlabeled).append(i)
    return queries, labeled, unlabeled


# --- the python folder ----------------------------------------------------------------------------


def test_read_folder_gives_images_labels_names_in_original_order(folder, fake):
    images, labels, names = cifar10.read_folder(folder)
    assert images.shape == (120, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and names == CLASS_NAMES
    # Rows are R plane, G plane, B plane: the channel layout must come back exactly.
    np.testing.assert_array_equal(images, fake[0])
    np.testing.assert_array_equal(labels, fake[1])


def test_both_pickle_dialects_load_to_the_same_batch(tmp_path, fake):
    batch = {
        b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072),
        b"labels": [3, 7],
        b"batch_label": b"x",
        b"filenames": [b"a.png", b"b.png"],
    }
    for name, data in (("py2", py2_pickle_bytes(batch)), ("py3", pickle.dumps(batch, protocol=2))):
        assert (b"numpy.core.multiarray" in data) == (name == "py2")
        (tmp_path / name).write_bytes(data)
        images, labels = cifar10.read_batch(tmp_path / name)
        assert images.shape == (2, 32, 32, 3) and labels.tolist() == [3, 7]
        assert (
            images[0, 0, 1, 0] == 1 and images[0, 0, 0, 1] == 1024 % 256
        )  # red (0,1); green plane


def test_load_split_follows_the_protocol_on_a_scaled_down_count(folder, fake):
    split = cifar10.load_split(folder, query_every=6, labeled_per_class=5)
    queries, labeled, unlabeled = expected_protocol(fake[1].tolist(), 6, 5)
    assert image_ids(split.x_query).tolist() == queries
    assert image_ids(split.x_labeled).tolist() == labeled
    assert image_ids(split.x_db).tolist() == unlabeled
    assert split.x_unlabeled is split.x_db
    np.testing.assert_array_equal(split.y_db, fake[1][unlabeled])
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (20, 50, 50)
    assert split.x_query.dtype == np.uint8 and split.num_classes == 10
    assert split.class_names == tuple(CLASS_NAMES)


def test_protocol_counts_at_full_size():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 6000))
    index = np.arange(60000)
    images = np.zeros((60000, 1, 1, 3), np.uint8)  # 1x1 RGB images whose pixel holds their index
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    split = protocol_split(images, labels)
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (1000, 5000, 54000)
    assert np.bincount(split.y_query).tolist() == [100] * 10
    assert np.bincount(split.y_labeled).tolist() == [500] * 10
    # Stable sort: inside a class the order of the original is kept.
    for part in (split.x_query, split.x_labeled, split.x_db):
        ids = image_ids(part)
        for c in range(10):
            assert np.all(np.diff(ids[labels[ids] == c]) > 0)
    all_ids = np.concatenate(
        [image_ids(split.x_query), image_ids(split.x_labeled), image_ids(split.x_db)]
    )
    assert sorted(all_ids.tolist()) == list(range(60000))


def test_read_pool_is_the_folder_in_order_with_its_train_count(folder, fake):
    pool = cifar10.read_pool(folder)
    np.testing.assert_array_equal(pool.images, fake[0])
    np.testing.assert_array_equal(pool.labels, fake[1])
    assert pool.labels.dtype == np.int64 and pool.num_classes == 10
    assert pool.class_names == tuple(CLASS_NAMES) and pool.name == "cifar10"
    assert pool.train_count == 100  # the five data_batch files of 20 images; test_batch: 20
    for options in ({}, {"directory": folder, "from_tfds": True}):
        with pytest.raises(ValueError, match="^read_pool: pass either a CIFAR-10 folder or"):
            cifar10.read_pool(**options)


@pytest.fixture(scope="module")
def folder_6000(tmp_path_factory):
    """A CIFAR-10 folder of 6,000 images (600 per class): data_batch_1..5 then test_batch, each
    of 1,000 images."""
    images, labels = fake_cifar_images(6000, seed=3)
    folder = write_cifar_folder(
        str(tmp_path_factory.mktemp("cifar6000") / "cifar10"), images, labels
    )
    return folder, labels


def test_deephash_protocols_on_a_generated_folder(folder_6000):
    """cifar10-1 and cifar10-2 scaled by 10 (the real sizes: tests/test_protocols.py):
    cifar10-1 with 10 queries and 50 labeled per class, cifar10-2 on the 5,000 + 1,000 division."""
    folder, labels = folder_6000
    pool = cifar10.read_pool(folder)
    assert (len(pool), pool.train_count) == (6000, 5000)
    sizes = {}
    for name in ("cifar10-1", "cifar10-2"):
        split = apply_protocol(pool, name, seed=0, queries_per_class=10, labeled_per_class=50)
        sizes[name] = split.part_sizes()
        assert (split.protocol, split.seed, split.name) == (name, 0, "cifar10")
        assert split.class_names == tuple(CLASS_NAMES) and split.num_classes == 10
        for part, x in (
            ("query", split.x_query),
            ("labeled", split.x_labeled),
            ("database", split.x_db),
        ):
            np.testing.assert_array_equal(image_ids(x), split.index[part])  # the pool's images
        np.testing.assert_array_equal(split.y_db, labels[split.index["database"]])
        assert split.x_unlabeled is split.x_db
        if name == "cifar10-1":
            assert np.bincount(split.y_query).tolist() == [10] * 10
            assert np.bincount(split.y_labeled).tolist() == [50] * 10
            assert np.isin(split.index["labeled"], split.index["database"]).all()
            assert not np.isin(split.index["query"], split.index["database"]).any()
        else:  # the test_batch's images are the queries, the data_batch images the database
            assert image_ids(split.x_query).tolist() == list(range(5000, 6000))
            assert image_ids(split.x_db).tolist() == list(range(5000))
    assert {
        n: (s["query"], s["labeled"], s["unlabeled"], s["database"]) for n, s in sizes.items()
    } == {
        "cifar10-1": (100, 500, 5900, 5900),
        "cifar10-2": (1000, 5000, 5000, 5000),
    }


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class _Custom:
    pass


@pytest.mark.parametrize("payload", ["reduce", "custom", "set", "tuple", "float"])
def test_a_pickle_with_any_other_type_is_refused(tmp_path, folder, payload):
    marker = str(tmp_path / "pwned")
    value = {
        "reduce": _Evil(marker),
        "custom": _Custom(),
        "set": {1, 2},
        "tuple": (1, 2),
        "float": 1.5,
    }[payload]
    path = os.path.join(folder, "data_batch_2")
    with open(path, "wb") as f:
        pickle.dump(
            {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": value}, f, protocol=2
        )
    with pytest.raises(DataFormatError, match="data_batch_2") as info:
        cifar10.read_folder(folder)
    assert "not a CIFAR-10 python batch" in str(info.value)
    assert not os.path.exists(marker)


def test_an_object_array_is_refused(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([_Custom()], dtype=object)}, protocol=2))
    with pytest.raises(DataFormatError, match="batch"):
        cifar10.load_pickle(path)


def test_missing_truncated_and_misshapen_files_are_named(folder):
    os.remove(os.path.join(folder, "test_batch"))
    with pytest.raises(FileNotFoundError, match="test_batch"):
        cifar10.read_folder(folder)
    path = os.path.join(folder, "data_batch_3")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"data_batch_3.*truncated"):
        cifar10.read_batch(path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataFormatError, match=r"data_batch_3.*\(N, 3072\)"):
        cifar10.read_batch(path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cifar10.read_folder(os.path.join(folder, "nowhere"))


# --- cifar10_Similarity.mat -----------------------------------------------------------------------


def test_similarity_mat_round_trip_and_check(tmp_path, folder, fake):
    split = cifar10.load_split(folder, query_every=6, labeled_per_class=5)
    path = str(tmp_path / "cifar10_Similarity.mat")
    cifar10.save_similarity(path, split.y_query, split.y_db)
    raw = scipy.io.loadmat(path)["label_Similarity"]
    assert sparse.issparse(raw) and raw.shape == (20, 50)
    expected = (split.y_query[:, None] == split.y_db[None, :]).astype(float)
    np.testing.assert_array_equal(raw.toarray(), expected)
    np.testing.assert_array_equal(cifar10.load_similarity(path).toarray(), expected)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".mat")] == ["cifar10_Similarity.mat"]
    # Accepted when it matches the split ...
    cifar10.load_split(folder, query_every=6, labeled_per_class=5, similarity=path)
    # ... refused, clearly, when it was made for another order, or another split shape.
    cifar10.save_similarity(path, split.y_query, np.roll(split.y_db, 1))
    with pytest.raises(ValueError, match=r"cifar10_Similarity.mat: \d+ of 1000 entries differ"):
        cifar10.load_split(folder, query_every=6, labeled_per_class=5, similarity=path)
    with pytest.raises(ValueError, match=r"shape \(20, 50\) does not match .* 24 queries x 46"):
        cifar10.load_split(folder, query_every=5, labeled_per_class=5, similarity=path)


def test_similarity_of_multi_hot_labels_is_one_shared_label():
    y_query = np.array([[1, 0, 0], [0, 1, 1]])
    y_db = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(
        cifar10.similarity_matrix(y_query, y_db).toarray(), [[1, 0, 0], [1, 1, 0]]
    )


@pytest.mark.parametrize("multi_hot", [False, True])
def test_similarity_matrix_is_labels_relevance_as_sparse_float64(multi_hot):
    rng = np.random.default_rng(3)
    if multi_hot:
        y_query = rng.integers(0, 2, (70, 21), dtype=np.uint8)
        y_db = rng.integers(0, 2, (90, 21), dtype=np.uint8)
    else:
        y_query, y_db = rng.integers(0, 10, 70), rng.integers(0, 10, 90)
    matrix = cifar10.similarity_matrix(y_query, y_db, chunk=16)  # 5 blocks of queries
    assert sparse.isspmatrix_csr(matrix) and matrix.dtype == np.float64 and matrix.shape == (70, 90)
    assert set(matrix.data.tolist()) == {1.0} and matrix.has_sorted_indices
    np.testing.assert_array_equal(matrix.toarray(), relevance(y_query, y_db).astype(np.float64))
    assert cifar10.similarity_matrix(y_query[:0], y_db).shape == (0, 90)
    other_kind = np.zeros(90, np.int64) if multi_hot else np.zeros((90, 21), np.uint8)
    with pytest.raises(ValueError, match="labels must both be int class ids"):
        cifar10.similarity_matrix(y_query, other_kind)


# --- TensorFlow Datasets --------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host or open a connection fails the test."""

    def refuse(*args, **kwargs):
        pytest.fail(f"must not go online (called with {args})")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_tfds_is_offline_by_default_and_fails_fast_without_archive(tmp_path, no_network):
    import tensorflow_datasets  # noqa: F401  (imported before timing: the import alone takes seconds)

    archive = os.path.join(str(tmp_path), "downloads", "manual", "cifar-10-binary.tar.gz")
    for options in (
        {},
        {"download": False},
    ):  # load_data("tfds:cifar10:DIR") passes no download option
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError) as info:
            cifar10.load_split(from_tfds=True, data_dir=str(tmp_path), **options)
        assert time.perf_counter() - start < 20  # no download retries, which back off for minutes
        message = str(info.value)
        assert message == (
            f"tfds:cifar10: no prepared data set in {tmp_path} and downloading is off "
            f"(download=False); download {cifar10.ARCHIVE_URL} and put it at {archive}"
        )
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        load_data(f"tfds:cifar10:{tmp_path}")
    with pytest.raises(
        ValueError, match="download must be True or False; received download='auto'"
    ):
        cifar10.read_tfds(str(tmp_path), download="auto")


def _refused(self, url, **kwargs):
    raise requests.exceptions.ConnectionError(
        f"HTTPSConnectionPool: Max retries exceeded with url: {url}\n"
        "(Caused by NameResolutionError)"
    )


def _not_found(self, url, **kwargs):
    response = requests.Response()
    response.status_code, response.url, response.raw = 404, url, io.BytesIO(b"not found")
    return response


@pytest.mark.parametrize(
    "get, reason",
    [
        (
            _refused,
            r"ConnectionError: HTTPSConnectionPool: Max retries exceeded with url: "
            r"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz "
            r"\(Caused by NameResolutionError\)",
        ),
        (
            _not_found,
            r"DownloadError: Failed to get url "
            r"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz. HTTP code: 404.",
        ),
    ],
)
def test_tfds_download_failure_is_the_same_one_line_message_with_the_reason(
    tmp_path, monkeypatch, get, reason
):
    # tfds' own download (requests, through its thread pool and retries) fails at the first request.
    monkeypatch.setattr(requests.Session, "get", get)
    archive = os.path.join(str(tmp_path), "downloads", "manual", "cifar-10-binary.tar.gz")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        cifar10.load_split(from_tfds=True, data_dir=str(tmp_path), download=True)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert type(info.value) is FileNotFoundError and "\n" not in message
    assert message.startswith(
        f"tfds:cifar10: no prepared data set in {tmp_path} and the download failed ("
    )
    assert re.search(reason, message), message
    assert message.endswith(f"); download {cifar10.ARCHIVE_URL} and put it at {archive}")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_tfds_load_path_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(
        b""
    )  # present, so no fail-fast; prepare is mocked
    with tfds.testing.mock_data(num_examples=60):
        split = cifar10.load_split(
            from_tfds=True, data_dir=str(tmp_path), query_every=6, labeled_per_class=2
        )
        # mock_data gives the same 60 examples for train and test
        reference = next(
            iter(tfds.load("cifar10", split="train", data_dir=str(tmp_path), batch_size=60))
        )
    assert (
        len(split.x_query) == 20
        and len(split.x_query) + len(split.x_labeled) + len(split.x_db) == 120
    )
    assert split.x_db.dtype == np.uint8 and split.x_db.shape[1:] == (32, 32, 3)
    assert split.y_db.dtype == np.int64 and split.num_classes == 10
    labels = np.asarray(reference["label"])
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.y_query, split.y_labeled, split.y_db])),
        np.sort(np.concatenate([labels, labels])),
    )


def test_tfds_prepares_offline_from_a_manual_archive(tmp_path, fake, monkeypatch, no_network):
    from tensorflow_datasets.core.download import download_manager

    archive = write_cifar_binary_archive(
        str(tmp_path / "downloads" / "manual" / "cifar-10-binary.tar.gz"), *fake
    )
    # Our fake is not the official archive: tfds' checksum check refuses it, with a clear message
    # ...
    with pytest.raises(DataFormatError, match="not the official CIFAR-10 archive"):
        cifar10.load_split(from_tfds=True, data_dir=str(tmp_path))
    # ... and with the check out of the way, tfds prepares it offline, and the split equals the
    # folder's.
    monkeypatch.setattr(
        download_manager.DownloadManager,
        "_register_or_validate_checksums",
        lambda self, url, url_info, path: None,
    )
    split = cifar10.load_split(
        from_tfds=True, data_dir=str(tmp_path), query_every=6, labeled_per_class=5
    )
    reference = cifar10.load_split(
        write_cifar_folder(str(tmp_path / "folder"), *fake), query_every=6, labeled_per_class=5
    )
    for part in ("x_query", "y_query", "x_labeled", "y_labeled", "x_db", "y_db"):
        np.testing.assert_array_equal(getattr(split, part), getattr(reference, part))
    assert split.class_names == tuple(CLASS_NAMES)
    assert os.path.isfile(archive)
    pool = cifar10.read_pool(from_tfds=True, data_dir=str(tmp_path))  # train then test, in order
    np.testing.assert_array_equal(pool.images, fake[0])
    np.testing.assert_array_equal(pool.labels, fake[1])
    assert pool.train_count == 100 and pool.class_names == tuple(CLASS_NAMES)
