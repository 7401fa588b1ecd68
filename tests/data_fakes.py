"""Writers of small fake data files in the real formats (no tests here; imported by
tests/test_data_*)."""

import io
import os
import pickle
import struct
import tarfile

import numpy as np

CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


class Py2Pickler(pickle._Pickler):
    """Pickles bytes the way Python 2 wrote `str` (BINSTRING opcodes), as in the CIFAR-10
    release."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle_bytes(obj):
    """A protocol-2 pickle as Python 2 + NumPy 1 wrote it (`numpy.core.multiarray`, BINSTRING)."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def fake_cifar_images(count, seed=0):
    """`count` labelled uint8 images (count, 32, 32, 3); pixel [0, 0] holds the index (mod 256) in
    red and index // 256 in green, so every image can be told apart; labels 0..9, shuffled,
    balanced."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(count) % 256
    images[:, 0, 0, 1] = np.arange(count) // 256
    labels = rng.permutation(np.arange(count) % 10)
    return images, labels


def image_ids(images):
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


def to_rows(images):
    """(N, 32, 32, 3) -> CIFAR's (N, 3072) rows: red plane, green plane, blue plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar_folder(directory, images, labels, py2_files=("data_batch_1", "batches.meta")):
    """The original release's `cifar10/` folder: 5 train batches (equal parts) + test_batch (the
    rest parts). Files in `py2_files` are written as Python 2 pickles, the others with Python 3
    protocol 2."""
    os.makedirs(directory, exist_ok=True)
    parts = np.array_split(np.arange(len(images)), 6)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

    def dump(name, obj):
        data = py2_pickle_bytes(obj) if name in py2_files else pickle.dumps(obj, protocol=2)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)

    for name, index in zip(names, parts):
        dump(
            name,
            {
                b"batch_label": f"{name} of 6".encode(),
                b"labels": [int(v) for v in labels[index]],
                b"data": to_rows(images[index]),
                b"filenames": [b"img%d.png" % i for i in index],
            },
        )
    dump(
        "batches.meta",
        {
            b"label_names": [n.encode() for n in CLASS_NAMES],
            b"num_cases_per_batch": len(parts[0]),
            b"num_vis": 3072,
        },
    )
    return directory


def write_cifar_binary_archive(path, images, labels):
    """`cifar-10-binary.tar.gz` in the real layout: records of 1 label byte + 3072 pixel bytes."""
    parts = np.array_split(np.arange(len(images)), 6)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:

        def add(name, data):
            info = tarfile.TarInfo("cifar-10-batches-bin/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, index in zip(names, parts):
            records = np.concatenate(
                [labels[index].astype(np.uint8)[:, None], to_rows(images[index])], 1
            )
            add(name, records.tobytes())
        add("batches.meta.txt", ("\n".join(CLASS_NAMES) + "\n\n").encode())
    return path


def save_split(path, images, labels, num_query, num_db):
    """Write the `npz:` data spec's arrays: the first `num_query` images are queries, the next
    `num_db` the database, the rest labeled -> the path."""
    db = num_query + num_db
    np.savez(
        path,
        x_query=images[:num_query],
        y_query=labels[:num_query],
        x_db=images[num_query:db],
        y_db=labels[num_query:db],
        x_labeled=images[db:],
        y_labeled=labels[db:],
    )
    return path


def signal_embeddings(
    seed=0, classes=10, dim=128, signal=8, labeled=50, unlabeled=2000, queries=20, nuisance=3.0
):
    """Embeddings where the class lives in `signal` of `dim` dimensions and the others are
    high-variance nuisance (std `nuisance`), scattered by one permutation, so that unsupervised PQ,
    which spends its codes on variance, retrieves poorly -> (x_labeled, y_labeled, x_unlabeled,
    y_unlabeled, x_query, y_query), float32 (N, dim) and int64 (N,).

    `labeled` vectors per class (the labeled set), `unlabeled` vectors of random classes (the
    unlabeled set and retrieval database), `queries` per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, signal))
    order = rng.permutation(dim)

    def draw(y):
        x = np.empty((len(y), dim), np.float32)
        x[:, :signal] = centres[y] + 0.35 * rng.normal(size=(len(y), signal))
        x[:, signal:] = nuisance * rng.normal(size=(len(y), dim - signal))
        return x[:, order], y.astype(np.int64)

    x_l, y_l = draw(np.repeat(np.arange(classes), labeled))
    x_u, y_u = draw(rng.integers(0, classes, unlabeled))
    x_q, y_q = draw(np.repeat(np.arange(classes), queries))
    return x_l, y_l, x_u, y_u, x_q, y_q
