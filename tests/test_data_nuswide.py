"""NUS-WIDE list files: parsing, tf.data decoding and resizing, errors that name the file and
line."""

import os

import numpy as np
import pytest
import tensorflow as tf

from gpq_keras.data import load_data, nuswide

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [200, 100, 50]], np.uint8
)


def write_image(path, colour, fmt="jpg", shape=(40, 30)):
    image = np.broadcast_to(colour, shape + (3,)).astype(np.uint8)
    encoded = tf.io.encode_jpeg(image, quality=100) if fmt == "jpg" else tf.io.encode_png(image)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, encoded)


@pytest.fixture
def nus(tmp_path):
    """LIST_DIR with test/train/database lists and IMAGE_ROOT with tiny JPEGs (one PNG)."""
    root, lists = tmp_path / "images", tmp_path / "lists"
    lists.mkdir()
    rng = np.random.default_rng(0)
    entries = {}
    for name, count in (("test.txt", 3), ("train.txt", 4), ("database.txt", 6)):
        lines, rows = [], []
        for i in range(count):
            colour = i % len(COLOURS)
            rel = f"{name[:-4]}/img_{i}.{'png' if i == 1 else 'jpg'}"
            write_image(str(root / rel), COLOURS[colour], "png" if i == 1 else "jpg")
            labels = rng.integers(0, 2, 21)
            lines.append(rel + " " + " ".join(map(str, labels)))
            rows.append((colour, labels))
        (lists / name).write_text("\n".join(lines) + "\n\n")  # trailing blank line is fine
        entries[name] = rows
    return str(lists), str(root), entries


def test_read_list_gives_paths_and_multi_hot_labels(nus):
    lists, _, entries = nus
    paths, labels = nuswide.read_list(os.path.join(lists, "train.txt"))
    assert paths == [f"train/img_{i}.{'png' if i == 1 else 'jpg'}" for i in range(4)]
    assert labels.dtype == np.uint8 and labels.shape == (4, 21)
    np.testing.assert_array_equal(labels, [row[1] for row in entries["train.txt"]])


def test_load_split_decodes_and_resizes_in_tf_data(nus):
    lists, root, entries = nus
    split = nuswide.load_split(lists, root, image_size=16)
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (3, 4, 6)
    assert split.x_db.shape == (6, 16, 16, 3) and split.x_db.dtype == np.uint8
    assert (
        split.x_unlabeled is split.x_db and split.num_classes == 21 and split.y_db.shape == (6, 21)
    )
    parts = (
        (split.x_query, "test.txt"),
        (split.x_labeled, "train.txt"),
        (split.x_db, "database.txt"),
    )
    for x, name in parts:
        colours = COLOURS[[row[0] for row in entries[name]]]
        np.testing.assert_allclose(
            x.reshape(len(x), -1, 3).mean(1), colours, atol=3
        )  # JPEG is lossy
        np.testing.assert_array_equal(
            x[1].reshape(-1, 3), np.broadcast_to(colours[1], (256, 3))
        )  # PNG exact
    same = load_data(f"nuswide:{lists}:{root}", image_size=8)
    assert same.x_query.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(same.y_db, split.y_db)


@pytest.mark.parametrize(
    "line, message",
    [
        ("a.jpg " + " ".join(["1"] * 20), "found 20 labels"),
        ("a.jpg " + " ".join(["1"] * 20 + ["2"]), "labels must be 0 or 1, found '2'"),
        ("a.jpg", "found 0 labels"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "test.txt"
    path.write_text("ok.jpg " + " ".join(["0"] * 21) + "\n\n" + line + "\n")
    with pytest.raises(nuswide.ListFormatError, match=f"test.txt:3: .*{message}"):
        nuswide.read_list(path)


def test_missing_lists_images_and_broken_images_are_named(nus, tmp_path):
    lists, root, _ = nus
    os.remove(os.path.join(root, "database", "img_4.jpg"))
    with pytest.raises(FileNotFoundError, match=r"1 of 6 .*database/img_4.jpg"):
        nuswide.load_split(lists, root, image_size=8)
    with open(os.path.join(root, "database", "img_4.jpg"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ValueError, match=r"database/img_4.jpg: not a decodable image"):
        nuswide.load_split(lists, root, image_size=8)
    os.remove(os.path.join(lists, "train.txt"))
    with pytest.raises(FileNotFoundError, match="train.txt"):
        nuswide.load_split(lists, root)
