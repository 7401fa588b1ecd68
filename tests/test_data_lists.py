"""List files (`list:`): any label width, zero-label rows, relevance and mAP against a NumPy
float64 reference, one-line errors naming the file and the line, skipped images."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from gpq_keras.data import lists, load_data
from gpq_keras.data.image_files import ImageFiles
from gpq_keras.data.labels import relevance
from gpq_keras.files import FileFormatError, UnreadableFile
from gpq_keras.metrics import evaluate_ranking, mean_average_precision

SIZES = {"train.txt": 5, "database.txt": 12, "test.txt": 4}


def write_image(path, colour, fmt="png", shape=(10, 14)):
    """A tiny image of one colour, written by Pillow."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.broadcast_to(np.asarray(colour, np.uint8), shape + (3,))
    Image.fromarray(np.ascontiguousarray(image)).save(
        path, format="PNG" if fmt == "png" else "JPEG", quality=100
    )


def colour_of(i):
    return ((37 * i) % 256, (91 * i + 20) % 256, (13 * i + 200) % 256)


def random_labels(rng, rows, width, one_hot=False):
    """uint8 (rows, width) 0/1 labels: sparse multi-hot with some rows of no label (the first is
    always one), or one-hot."""
    if one_hot:
        return np.eye(width, dtype=np.uint8)[rng.integers(0, width, rows)]
    labels = (rng.random((rows, width)) < 3 / width).astype(np.uint8)
    labels[::3] = 0  # zero-label rows: relevant to nothing, kept
    return labels


def list_text(paths, labels=None):
    rows = [
        p if labels is None else p + " " + " ".join(map(str, row))
        for p, row in zip(paths, labels if labels is not None else [None] * len(paths))
    ]
    return "\n".join(rows) + "\n"


def make_collection(root, width, one_hot=False, unlabeled=0, seed=0, image_root=None):
    """LIST_DIR `root/lists` with train/database/test lists of `width` labels (+ unlabeled.txt of
    `unlabeled` paths) over PNGs (one JPEG) under `image_root` (default root/images) -> (list_dir,
    image_root, {file: (paths, labels)})."""
    rng = np.random.default_rng(seed)
    list_dir = os.path.join(root, "lists")
    image_root = image_root or os.path.join(root, "images")
    os.makedirs(list_dir, exist_ok=True)
    written, n = {}, 0
    for name, count in {**SIZES, **({"unlabeled.txt": unlabeled} if unlabeled else {})}.items():
        paths = []
        for i in range(count):
            fmt = "jpg" if (name, i) == ("database.txt", 2) else "png"
            rel = f"{name[:-4]}/sub/img_{i}.{fmt}"
            write_image(os.path.join(image_root, rel), colour_of(n), fmt)
            paths.append(rel)
            n += 1
        labels = None if name == "unlabeled.txt" else random_labels(rng, count, width, one_hot)
        text = list_text(paths, labels)
        with open(os.path.join(list_dir, name), "w") as f:
            f.write("\n" + text.replace("\n", "\n\n", 1))  # blank lines are skipped
        written[name] = (paths, labels)
    return list_dir, image_root, written


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [24, 81])
def test_read_list_any_width_keeps_zero_label_rows(tmp_path, width):
    list_dir, _, written = make_collection(str(tmp_path), width)
    paths, labels = written["database.txt"]
    got = lists.read_list(os.path.join(list_dir, "database.txt"))
    assert got.paths == paths
    assert got.labels.dtype == np.uint8 and got.labels.shape == (12, width)
    np.testing.assert_array_equal(got.labels, labels)
    assert not got.labels[0].any() and not got.labels[3].any()  # rows of no label are kept
    # line 1 is blank, then the first entry, a blank line, the others
    np.testing.assert_array_equal(got.lines, [2, 4] + list(range(5, 15)))
    assert got.lines.dtype == np.int64
    assert lists.read_list(os.path.join(list_dir, "database.txt"), width=width).labels.shape == (
        12,
        width,
    )


@pytest.mark.parametrize("width", [24, 81])
def test_malformed_line_of_a_wide_list_names_file_and_line(tmp_path, width):
    path = tmp_path / "train.txt"
    good = "a.jpg " + " ".join(["0"] * width)
    path.write_text(f"{good}\n\n{good}\nb.jpg " + " ".join(["1"] * (width - 1)) + "\n")
    with pytest.raises(lists.ListFormatError) as info:
        lists.read_list(path)
    assert str(info.value) == (
        f"{path}:4: expected a path and {width} 0/1 labels as on line 1, found {width - 1} labels"
    )


def test_unlabeled_list_is_paths_only(tmp_path):
    path = tmp_path / "unlabeled.txt"
    path.write_text("a.jpg\n\n  sub/b.png  \n")
    got = lists.read_list(path, labeled=False)
    assert got.paths == ["a.jpg", "sub/b.png"] and got.labels is None
    np.testing.assert_array_equal(got.lines, [1, 3])


def test_resolve_paths_joins_under_the_root(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a/./b.jpg 1\nc/../d.jpg 0\n")
    entries = lists.read_list(path)
    assert lists.resolve_paths(entries, "/data/img", path) == [
        "/data/img/a/./b.jpg",
        "/data/img/c/../d.jpg",
    ]


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, one_hot", [(24, False), (81, False), (7, True)])
def test_load_split_streams_image_files(tmp_path, width, one_hot):
    list_dir, root, written = make_collection(str(tmp_path), width, one_hot)
    split = lists.load_split(list_dir, root, image_size=6)
    parts = {
        "train.txt": (split.x_labeled, split.y_labeled),
        "database.txt": (split.x_db, split.y_db),
        "test.txt": (split.x_query, split.y_query),
    }
    n = 0
    for name, (x, y) in parts.items():
        paths, labels = written[name]
        assert isinstance(x, ImageFiles) and x.shape == (len(paths), 6, 6, 3)
        assert x.antialias and list(x.paths) == [os.path.join(root, p) for p in paths]
        np.testing.assert_array_equal(y, labels)
        images = x.read()  # decoded only now
        assert images.dtype == np.uint8 and images.shape == (len(paths), 6, 6, 3)
        for i in range(len(paths)):
            expected = np.broadcast_to(np.asarray(colour_of(n + i), np.uint8), (6, 6, 3))
            if (name, i) == ("database.txt", 2):  # the JPEG is lossy
                np.testing.assert_allclose(images[i], expected, atol=4)
            else:
                np.testing.assert_array_equal(images[i], expected)
        n += len(paths)
    assert split.x_unlabeled is split.x_db and split.num_classes == width
    assert split.name == "lists" and split.protocol == "given" and split.skipped == []
    assert split.streamed and split.part_sizes()["unlabeled"] == 12
    for part, count in (("labeled", 5), ("database", 12), ("query", 4), ("unlabeled", 12)):
        np.testing.assert_array_equal(split.index[part], np.arange(count))
        assert split.index[part].dtype == np.int64
    assert not lists.has_unlabeled_list(list_dir)


def test_unlabeled_list_is_the_unlabeled_set(tmp_path):
    list_dir, root, written = make_collection(str(tmp_path), 24, unlabeled=3)
    assert lists.has_unlabeled_list(list_dir)
    split = lists.load_split(list_dir, root, image_size=4, name="mine")
    assert split.name == "mine" and isinstance(split.x_unlabeled, ImageFiles)
    assert split.x_unlabeled is not split.x_db
    assert list(split.x_unlabeled.paths) == [
        os.path.join(root, p) for p in written["unlabeled.txt"][0]
    ]
    np.testing.assert_array_equal(split.index["unlabeled"], [0, 1, 2])
    assert split.part_sizes()["unlabeled"] == 3


def test_image_root_defaults_to_the_list_folder_and_load_data_reads_lists(tmp_path):
    list_dir = str(tmp_path / "lists")
    _, root, _ = make_collection(str(tmp_path), 24, image_root=list_dir)
    split = lists.load_split(list_dir, image_size=4)
    assert list(split.x_db.paths)[0] == os.path.join(list_dir, "database/sub/img_0.png")
    same = load_data(f"list:{list_dir}", image_size=4)
    np.testing.assert_array_equal(same.y_query, split.y_query)
    assert list(same.x_query.paths) == list(split.x_query.paths)


# --- relevance and mAP on multi-label lists against a NumPy float64 reference -------------------


def reference_relevance(query_labels, db_labels):
    """bool (Q, N): at least one shared label, item by item."""
    q, d = np.asarray(query_labels, np.float64), np.asarray(db_labels, np.float64)
    out = np.zeros((len(q), len(d)), bool)
    for i in range(len(q)):
        for j in range(len(d)):
            out[i, j] = float(np.sum(q[i] * d[j])) > 0.0
    return out


def reference_ap(ranking, rel, top_k):
    """float64 (Q,): the original's AP over the top_k, 0 for a query with no relevant item."""
    ap = np.zeros(len(ranking), np.float64)
    for q, ranked in enumerate(ranking[:, :top_k]):
        hits, total = 0, 0.0
        for j, position in enumerate(ranked, start=1):
            if rel[q, position]:
                hits += 1
                total += hits / j
        ap[q] = total / hits if hits else 0.0
    return ap


@pytest.mark.parametrize("width", [24, 81])
def test_relevance_and_map_of_list_labels_match_a_float64_reference(tmp_path, width):
    list_dir, root, _ = make_collection(str(tmp_path), width, seed=width)
    split = lists.load_split(list_dir, root, image_size=4)
    yq, yd = split.y_query, split.y_db
    assert not yq[0].any() and not yd[0].any()  # zero-label rows on both sides
    rel = reference_relevance(yq, yd)
    np.testing.assert_array_equal(relevance(yq, yd), rel)
    assert rel.any() and not rel[0].any() and not rel[:, 0].any()
    rng = np.random.default_rng(1)
    ranking = np.stack([rng.permutation(len(yd)) for _ in range(len(yq))])
    for top_k in (None, 5):
        ap = reference_ap(ranking, rel, top_k or len(yd))
        result = evaluate_ranking(ranking, yq, yd, top_k=top_k, precision_at=(3,))
        np.testing.assert_allclose(result["ap"], ap, rtol=1e-12)
        np.testing.assert_allclose(result["mAP"], ap.mean(), rtol=1e-12)
        k3 = np.mean([rel[q, ranking[q, :3]].sum() / 3.0 for q in range(len(yq))])
        np.testing.assert_allclose(result["precision"][3], k3, rtol=1e-12)
        np.testing.assert_allclose(
            mean_average_precision(ranking, yq, yd, top_k=top_k), ap.mean(), rtol=1e-12
        )
    assert ap[0] == 0.0  # the query of no label


# --- bad input: one line naming the file and the line ---------------------------------------------

W = 4
ROW = " " + " ".join(["0", "1", "0", "0"])


def one_line(info):
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "name, text, error, message",
    [
        (
            "train.txt",
            f"a.png{ROW}\n{ROW.strip()}\n",
            lists.ListFormatError,
            r"train.txt:2: the line starts with a label \('0'\), not an image path",
        ),
        (
            "train.txt",
            f"a.png{ROW}\nb.png 1 0 1\n",
            lists.ListFormatError,
            r"train.txt:2: expected a path and 4 0/1 labels as on line 1, found 3 labels",
        ),
        (
            "database.txt",
            "a.png 1 0 1 0 1\n",
            lists.ListFormatError,
            r"database.txt:1: expected a path and 4 0/1 labels as in .*train.txt, found 5 labels",
        ),
        (
            "test.txt",
            f"a.png{ROW}\n\nb.png 0 2 0 0\n",
            lists.ListFormatError,
            r"test.txt:3: labels must be 0 or 1, found '2'",
        ),
        (
            "test.txt",
            f"../x.png{ROW}\n",
            lists.ListFormatError,
            r"test.txt:1: '\.\./x.png' leaves IMAGE_ROOT \(.*images\): '\.\.' climbs out of it",
        ),
        (
            "database.txt",
            f"a.png{ROW}\nok/../../x.png{ROW}\n",
            lists.ListFormatError,
            r"database.txt:2: 'ok/\.\./\.\./x.png' leaves IMAGE_ROOT",
        ),
        (
            "train.txt",
            f"a.png{ROW}\n/abs/x.png{ROW}\n",
            lists.ListFormatError,
            r"train.txt:2: '/abs/x.png' leaves IMAGE_ROOT \(.*\): an absolute path",
        ),
        (
            "train.txt",
            f"a.png{ROW}\nb.png{ROW}\n\ngone.png{ROW}\n",
            FileNotFoundError,
            r"train.txt:4: image not found: .*images/gone.png$",
        ),
        (
            "database.txt",
            f"gone.png{ROW}\nb.png{ROW}\nalso_gone.png{ROW}\n",
            FileNotFoundError,
            r"database.txt:1: image not found: .*gone.png \(and 1 more of its 3 images\)",
        ),
        (
            "test.txt",
            f"a.png{ROW}\nnot_image.png{ROW}\n",
            UnreadableFile,
            r"test.txt:2: .*not_image.png: not a decodable image",
        ),
        (
            "unlabeled.txt",
            "\n\n",
            lists.ListFormatError,
            r"unlabeled.txt: no entries; the list names no images",
        ),
        (
            "unlabeled.txt",
            f"a.png\nb.png{ROW}\n",
            lists.ListFormatError,
            r"unlabeled.txt:2: expected an image path alone, found 4 more fields",
        ),
        (
            "unlabeled.txt",
            "a.png\ngone.png\n",
            FileNotFoundError,
            r"unlabeled.txt:2: image not found: .*gone.png",
        ),
        ("train.txt", "", lists.ListFormatError, r"train.txt: no entries"),
        (
            "test.txt",
            f"a.png{ROW}\nb\x00.png{ROW}\n",
            lists.ListFormatError,
            r"test.txt:2: a NUL byte; not a text list file",
        ),
        (
            "test.txt",
            f"a.png{ROW}\ncaf\udce9.png{ROW}\n",
            lists.ListFormatError,
            r"test.txt:2: not UTF-8 text \(byte 0xe9 at column 4\)",
        ),
    ],
)
def test_bad_input_names_the_file_and_the_line(tmp_path, name, text, error, message):
    lists_dir, root = tmp_path / "lists", tmp_path / "images"
    lists_dir.mkdir()
    for image in ("a.png", "b.png"):
        write_image(str(root / image), (1, 2, 3))
    (root / "not_image.png").write_bytes(b"not an image at all")
    for other in lists.LIST_FILES.values():
        (lists_dir / other).write_text(f"a.png{ROW}\nb.png{ROW}\n")
    (lists_dir / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(error) as info:
        lists.load_split(lists_dir, root, image_size=4)
    assert re.search(message, one_line(info)), one_line(info)
    if error is not FileNotFoundError:
        assert issubclass(error, FileFormatError)


def test_width_must_be_the_one_asked(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(f"a.png{ROW}\n")
    with pytest.raises(lists.ListFormatError) as info:
        lists.read_list(path, width=21)
    assert one_line(info) == f"{path}:1: expected a path and 21 0/1 labels, found 4 labels"
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        lists.read_list(path, width=0)
    with pytest.raises(FileNotFoundError, match="list file not found: .*test.txt"):
        lists.read_list(tmp_path / "test.txt")
    with pytest.raises(FileNotFoundError, match="list folder not found"):
        lists.load_split(tmp_path / "none")


def test_skip_unreadable_leaves_images_out_and_lists_them(tmp_path):
    list_dir, root, written = make_collection(str(tmp_path), 24)
    gone = [
        os.path.join(root, written[name][0][i])
        for name, i in (("train.txt", 1), ("database.txt", 4), ("database.txt", 5))
    ]
    for path in gone:
        os.remove(path)
    fifo = os.path.join(root, written["test.txt"][0][2])
    os.remove(fifo)
    os.mkfifo(fifo)  # never opened for reading: that would block
    with pytest.raises(FileNotFoundError) as info:
        lists.load_split(list_dir, root)
    # line 4 of train.txt: a blank line, the first entry and a blank line come first
    assert one_line(info) == f"{list_dir}/train.txt:4: image not found: {gone[0]}"
    split = lists.load_split(list_dir, root, image_size=4, skip_unreadable=True)
    assert [path for path, _ in split.skipped] == gone + [fifo]
    reasons = dict(split.skipped)
    assert reasons[gone[0]] == f"{list_dir}/train.txt:4: image not found: {gone[0]}"
    assert reasons[fifo].startswith(f"{list_dir}/test.txt:5: {fifo}: a FIFO")
    assert (len(split.x_labeled), len(split.x_db), len(split.x_query)) == (4, 10, 3)
    np.testing.assert_array_equal(split.index["labeled"], [0, 2, 3, 4])
    np.testing.assert_array_equal(split.index["database"], [0, 1, 2, 3] + list(range(6, 12)))
    np.testing.assert_array_equal(split.index["query"], [0, 1, 3])
    np.testing.assert_array_equal(split.y_labeled, written["train.txt"][1][[0, 2, 3, 4]])
    np.testing.assert_array_equal(split.y_db, written["database.txt"][1][split.index["database"]])
    np.testing.assert_array_equal(split.y_query, written["test.txt"][1][[0, 1, 3]])
    assert gone[0] not in list(split.x_labeled.paths) and fifo not in list(split.x_query.paths)
    assert split.x_db.read().shape == (10, 4, 4, 3)


def test_a_list_whose_images_are_all_unreadable_is_refused(tmp_path):
    list_dir, root, written = make_collection(str(tmp_path), 24)
    for path in written["test.txt"][0]:
        os.remove(os.path.join(root, path))
    with pytest.raises(ValueError) as info:
        lists.load_split(list_dir, root, skip_unreadable=True)
    assert one_line(info) == (
        f"{list_dir}/test.txt: none of its 4 images could be used (all skipped as unreadable)"
    )
