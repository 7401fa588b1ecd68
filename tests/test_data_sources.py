"""`load_data(spec)`: the CLI's data specs, the user's npz and image folders, the digits default."""

import os

import numpy as np
import pytest
import tensorflow as tf
from data_fakes import fake_cifar_images, image_ids, write_cifar_folder

from gpq_keras.data import SPEC_FORMS, Split, check_images, load_data, user


@pytest.mark.parametrize(
    "spec, why",
    [
        ("", "empty"),
        ("imagenet:/data", "unknown source 'imagenet'"),
        ("cifar10", "cifar10 needs a path"),
        ("tfds:mnist", "only tfds:cifar10"),
        ("nuswide:/lists", "nuswide needs LIST_DIR:IMAGE_ROOT"),
        ("digits:/x", "digits takes no path"),
    ],
)
def test_bad_spec_is_one_clear_line(spec, why):
    with pytest.raises(ValueError) as info:
        load_data(spec)
    message = str(info.value)
    assert f"bad data spec {spec!r}: {why}" in message and "\n" not in message
    assert all(form in message for form in SPEC_FORMS)


@pytest.mark.parametrize(
    "spec", ["cifar10:{}/none", "npz:{}/none.npz", "folder:{}/none", "nuswide:{}/none:{}/none"]
)
def test_missing_path_is_named(tmp_path, spec):
    spec = spec.format(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"not found: {tmp_path}/none"):
        load_data(spec)


def test_digits_spec():
    digits = load_data("digits")
    assert (len(digits.x_query), len(digits.x_labeled), len(digits.x_db)) == (180, 500, 1117)
    assert digits.x_db.shape[1:] == (32, 32, 3) and digits.x_db.dtype == np.uint8


def test_cifar10_spec(tmp_path):
    images, labels = fake_cifar_images(60)
    folder = write_cifar_folder(str(tmp_path / "cifar10"), images, labels)
    split = load_data(f"cifar10:{folder}", query_every=6, labeled_per_class=2)
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (10, 20, 30)
    np.testing.assert_array_equal(labels[image_ids(split.x_db)], split.y_db)


def make_split(multi_hot=False, with_training=True):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    y = np.eye(5, dtype=np.uint8)[np.arange(30) % 5] if multi_hot else np.arange(30) % 5
    parts = dict(x_query=x[:5], y_query=y[:5], x_db=x[5:], y_db=y[5:])
    if with_training:
        parts.update(x_labeled=x[5:15], y_labeled=y[5:15])
    return Split(**parts, name="mine")


@pytest.mark.parametrize("multi_hot", [False, True])
def test_npz_round_trip(tmp_path, multi_hot):
    split = make_split(multi_hot)
    path = str(tmp_path / "mine.npz")
    user.save_npz(path, split)
    assert sorted(np.load(path).files) == [
        "x_db",
        "x_labeled",
        "x_query",
        "y_db",
        "y_labeled",
        "y_query",
    ]
    loaded = load_data(f"npz:{path}")
    for key in ("x_query", "y_query", "x_db", "y_db", "x_labeled", "y_labeled", "x_unlabeled"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(split, key))
    assert loaded.name == "mine" and loaded.num_classes == 5 and loaded.has_training_data
    assert os.listdir(tmp_path) == ["mine.npz"]


def test_npz_with_separate_unlabeled_and_without_training(tmp_path):
    split = make_split()
    extra = np.zeros((7, 8, 8, 3), np.uint8)
    np.savez(
        tmp_path / "a.npz",
        x_query=split.x_query,
        y_query=split.y_query,
        x_db=split.x_db,
        y_db=split.y_db,
        x_labeled=split.x_labeled,
        y_labeled=split.y_labeled,
        x_unlabeled=extra,
    )
    assert load_data(f"npz:{tmp_path / 'a.npz'}").x_unlabeled.shape == (7, 8, 8, 3)
    user.save_npz(tmp_path / "b.npz", make_split(with_training=False))
    without = load_data(f"npz:{tmp_path / 'b.npz'}")
    assert without.x_labeled is None and not without.has_training_data


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("y_db"), r"missing arrays \['y_db'\]"),
        (lambda a: a.update(x_db=a["x_db"].astype(np.float32)), "'x_db' must be uint8 images"),
        (lambda a: a.update(x_query=a["x_query"][..., 0]), "'x_query' must be uint8 images"),
        (
            lambda a: a.update(y_query=np.eye(5)[a["y_query"]].astype(int)),
            "all int .* or all multi-hot",
        ),
        (lambda a: a.update(x_query=a["x_query"][:, :4]), "one size"),
        (lambda a: a.pop("y_labeled"), "x_labeled and y_labeled go together"),
        (lambda a: a.update(y_db=np.array([{}] * 25, dtype=object)), "not a plain-array .npz"),
    ],
)
def test_npz_errors_name_the_file_and_array(tmp_path, change, message):
    split = make_split()
    arrays = {
        k: getattr(split, k)
        for k in ("x_query", "y_query", "x_db", "y_db", "x_labeled", "y_labeled")
    }
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"bad.npz: .*{message}"):
        load_data(f"npz:{path}")


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((4, 8, 8, 3), np.float32),
        np.zeros((4, 8, 8), np.uint8),
        np.zeros((4, 8, 8, 1), np.uint8),
        np.zeros((4, 8, 8, 4), np.uint8),
    ],
)
def test_one_image_check_for_splits_and_files(images):
    message = f"must be uint8 images (N, H, W, 3); got {images.dtype} {images.shape}"
    with pytest.raises(ValueError) as info:
        check_images(images, "mine.npz: 'x_db'")
    assert str(info.value) == f"mine.npz: 'x_db' {message}"
    split = make_split()
    for key in ("x_query", "x_db", "x_labeled", "x_unlabeled"):
        parts = {
            k: getattr(split, k)
            for k in ("x_query", "y_query", "x_db", "y_db", "x_labeled", "y_labeled")
        }
        parts[key] = images
        if key != "x_unlabeled":
            parts[f"y{key[1:]}"] = parts[f"y{key[1:]}"][: len(images)]
        with pytest.raises(ValueError) as info:
            Split(**parts, name="mine")
        assert str(info.value) == f"mine: {key} {message}"
    ok = np.zeros((2, 4, 4, 3), np.uint8)
    assert check_images(ok, "x") is ok


def test_folder_of_class_subfolders(tmp_path):
    colours = {"cat": (250, 0, 0), "dog": (0, 250, 0), "emu": (0, 0, 250)}
    for name, colour in colours.items():
        os.makedirs(tmp_path / "pics" / name)
        for i in range(20):
            image = np.broadcast_to(np.array(colour, np.uint8), (12, 10, 3))
            tf.io.write_file(
                str(tmp_path / "pics" / name / f"{i:02d}.png"), tf.io.encode_png(image)
            )
    (tmp_path / "pics" / "README.txt").write_text("not an image, not a class")
    split = load_data(f"folder:{tmp_path / 'pics'}", image_size=16)
    assert split.class_names == ("cat", "dog", "emu") and split.num_classes == 3
    assert (
        split.name == "pics"
        and split.x_db.shape[1:] == (16, 16, 3)
        and split.x_db.dtype == np.uint8
    )
    # the given protocol: a tenth of each class (2) held out as queries, every other image
    # labeled and in the database, read from the files when drawn
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (6, 54, 54)
    assert split.protocol == "given" and split.streamed
    for x, y in ((split.x_query, split.y_query), (split.x_db, split.y_db)):
        pixels = x.read()[:, 5, 5]
        np.testing.assert_array_equal(pixels, np.array(list(colours.values()), np.uint8)[y])
    custom = user.load_folder(
        str(tmp_path / "pics"), image_size=8, query_every=5, labeled_per_class=4
    )
    assert (len(custom.x_query), len(custom.x_labeled), len(custom.x_db)) == (12, 12, 36)
