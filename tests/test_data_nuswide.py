"""NUS-WIDE list files: a `list:` collection of 21 labels whose parts are `ImageFiles`, decoded and
resized (antialiased) when read, with errors that name the file and line."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from gpq_keras.data import lists, load_data, nuswide
from gpq_keras.data.image_files import ImageFiles
from gpq_keras.files import UnreadableFile

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [200, 100, 50]], np.uint8
)


def write_image(path, colour, fmt="jpg", shape=(40, 30)):
    """A tiny image of one colour, written by Pillow."""
    image = np.ascontiguousarray(np.broadcast_to(colour, shape + (3,)).astype(np.uint8))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG" if fmt == "jpg" else "PNG", quality=100)


@pytest.fixture
def nus(tmp_path):
    """LIST_DIR with test/train/database lists and IMAGE_ROOT with tiny JPEGs (one PNG)."""
    root, lists_dir = tmp_path / "images", tmp_path / "lists"
    lists_dir.mkdir()
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
        (lists_dir / name).write_text("\n".join(lines) + "\n\n")  # trailing blank line is fine
        entries[name] = rows
    return str(lists_dir), str(root), entries


def test_read_list_gives_paths_and_multi_hot_labels(nus):
    lists_dir, _, entries = nus
    paths, labels = nuswide.read_list(os.path.join(lists_dir, "train.txt"))
    assert paths == [f"train/img_{i}.{'png' if i == 1 else 'jpg'}" for i in range(4)]
    assert labels.dtype == np.uint8 and labels.shape == (4, 21)
    np.testing.assert_array_equal(labels, [row[1] for row in entries["train.txt"]])
    assert nuswide.ListFormatError is lists.ListFormatError


def test_load_split_streams_and_resizes_image_files(nus):
    lists_dir, root, entries = nus
    split = nuswide.load_split(lists_dir, root, image_size=16)
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (3, 4, 6)
    assert isinstance(split.x_db, ImageFiles) and split.x_db.antialias and split.streamed
    assert split.x_db.shape == (6, 16, 16, 3) and split.x_db.dtype == np.uint8
    assert split.x_unlabeled is split.x_db and split.num_classes == 21
    assert split.y_db.shape == (6, 21) and split.name == "nuswide" and split.protocol == "given"
    parts = (
        (split.x_query, split.y_query, "test.txt"),
        (split.x_labeled, split.y_labeled, "train.txt"),
        (split.x_db, split.y_db, "database.txt"),
    )
    for files, y, name in parts:
        x = files.read()  # decoded only now
        assert x.shape == (len(files), 16, 16, 3) and x.dtype == np.uint8
        colours = COLOURS[[row[0] for row in entries[name]]]
        np.testing.assert_allclose(
            x.reshape(len(x), -1, 3).mean(1), colours, atol=3
        )  # JPEG is lossy
        np.testing.assert_array_equal(
            x[1].reshape(-1, 3), np.broadcast_to(colours[1], (256, 3))
        )  # PNG exact
        np.testing.assert_array_equal(files[1], x[1])  # one image, read alone
        np.testing.assert_array_equal(y, [row[1] for row in entries[name]])
    same = load_data(f"nuswide:{lists_dir}:{root}", image_size=8)
    assert same.x_query.shape == (3, 8, 8, 3) and isinstance(same.x_query, ImageFiles)
    assert same.x_query.read().shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(same.y_db, split.y_db)


@pytest.mark.parametrize(
    "line, message",
    [
        ("a.jpg " + " ".join(["1"] * 20), "expected a path and 21 0/1 labels, found 20 labels"),
        ("a.jpg " + " ".join(["1"] * 20 + ["2"]), "labels must be 0 or 1, found '2'"),
        ("a.jpg", "expected a path and 21 0/1 labels, found 0 labels"),
        (" ".join(["1"] * 21), r"the line starts with a label \('1'\), not an image path"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "test.txt"
    path.write_text("ok.jpg " + " ".join(["0"] * 21) + "\n\n" + line + "\n")
    with pytest.raises(nuswide.ListFormatError, match=f"test.txt:3: {message}$"):
        nuswide.read_list(path)


def test_lists_of_another_width_are_refused(nus):
    lists_dir, root, _ = nus
    path = os.path.join(lists_dir, "database.txt")
    with open(path, "a") as f:
        f.write("database/img_0.jpg " + " ".join(["0"] * 24) + "\n")
    with pytest.raises(nuswide.ListFormatError) as info:
        nuswide.load_split(lists_dir, root)
    assert str(info.value) == (
        f"{path}:8: expected a path and 21 0/1 labels, found 24 labels"
    )  # 6 entries, a blank line, then this one


def test_missing_lists_images_and_broken_images_are_named(nus):
    lists_dir, root, _ = nus
    database = os.path.join(lists_dir, "database.txt")
    image = os.path.join(root, "database", "img_4.jpg")
    os.remove(image)
    with pytest.raises(FileNotFoundError) as info:
        nuswide.load_split(lists_dir, root, image_size=8)
    assert str(info.value) == f"{database}:5: image not found: {image}"
    split = nuswide.load_split(lists_dir, root, image_size=8, skip_unreadable=True)
    assert len(split.x_db) == 5 and [path for path, _ in split.skipped] == [image]
    np.testing.assert_array_equal(split.index["database"], [0, 1, 2, 3, 5])
    with open(image, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(UnreadableFile) as info:  # the header is checked at load
        nuswide.load_split(lists_dir, root, image_size=8)
    assert str(info.value).startswith(f"{database}:5: {image}: not a decodable image")
    # a JPEG whose header reads but whose pixels do not decode: named when a batch reads it
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    with open(image, "wb") as f:
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    split = nuswide.load_split(lists_dir, root, image_size=8)
    with pytest.raises(UnreadableFile, match=f"^{image}: not a decodable image"):
        split.x_db.read()
    assert split.x_db.read([0, 1, 2, 3, 5]).shape == (5, 8, 8, 3)
    os.remove(os.path.join(lists_dir, "train.txt"))
    with pytest.raises(FileNotFoundError, match="list file not found: .*train.txt"):
        nuswide.load_split(lists_dir, root)
    with pytest.raises(FileNotFoundError, match="NUS-WIDE image folder not found"):
        nuswide.load_split(lists_dir, os.path.join(root, "none"))
