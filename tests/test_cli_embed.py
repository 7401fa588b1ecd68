"""`gpq embed`: image files in class folders -> a frozen backbone's pooled features in an .npz
(x_db, sources, y_db, class_names), then `gpq train --data npz:... --backbone mlp` and
`gpq evaluate` on it, end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpq_keras import backbones, cli
from gpq_keras.data import digits
from gpq_keras.data.images import decode_images

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

SIZE = 32
COLOURS = {"blue": (30, 40, 210), "green": (30, 200, 40), "red": (220, 30, 30)}
# random weights (no download): mobilenet_v3_small's features vanish then (~1e-11 at 32x32, its
# batch norms at their initial statistics), resnet50's do not
BACKBONE = ["--backbone", "resnet50", "--backbone-weights", "none"]


def _write_images(folder, per_class, rng):
    """PNG and JPEG files of any size, `per_class` in each colour's class folder."""
    for name, colour in COLOURS.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            height, width = rng.integers(10, 48, 2)
            image = np.clip(
                np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255
            ).astype(np.uint8)
            encode, ext = (tf.io.encode_png, "png") if i % 2 else (tf.io.encode_jpeg, "jpg")
            tf.io.write_file(str(folder / name / f"{name}_{i}.{ext}"), encode(image))


def _embed(*argv):
    return cli.main(["embed", *BACKBONE, "--image-size", str(SIZE), *map(str, argv)])


def _error(capsys):
    """The one line a failing command printed on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpq embed: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    _write_images(root / "photos", 3, np.random.default_rng(0))
    return root


@pytest.fixture(scope="module")
def embedded(photos):
    """`gpq embed` of the photos, the backbone's random weights drawn with seed 1 -> (the npz's
    arrays, what it printed)."""
    import contextlib
    import io

    out = photos / "emb.npz"
    keras.utils.set_random_seed(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = _embed("--images", photos / "photos", "--output", out, "--batch-size", 4)
    assert rc == 0
    with np.load(out, allow_pickle=False) as data:
        return dict(data), printed.getvalue()


def test_embed_writes_the_backbones_features_of_every_file(photos, embedded):
    arrays, printed = embedded
    assert sorted(arrays) == ["class_names", "sources", "x_db", "y_db"]
    x, sources = arrays["x_db"], arrays["sources"]
    assert x.dtype == np.float32 and x.ndim == 2 and len(x) == 9 and np.isfinite(x).all()
    assert sources.dtype.kind == "U" and all(os.path.isabs(s) for s in sources)
    folder = os.path.abspath(photos / "photos")
    expected = sorted(
        os.path.join(folder, name, f)
        for name in COLOURS
        for f in os.listdir(photos / "photos" / name)
    )
    assert list(sources) == expected  # class folders in order, files sorted within each
    # the same frozen extractor (same seed, same random weights) on the same decoded images
    keras.utils.set_random_seed(1)
    extractor = backbones.build_feature_extractor("resnet50", (SIZE, SIZE, 3))
    pixels = decode_images(list(sources), (SIZE, SIZE)).astype(np.float32)
    reference = extractor.predict(pixels, batch_size=4, verbose=0)
    assert x.shape == reference.shape
    scale = np.abs(reference).max()
    assert scale > 0.1 and x.std(axis=0).mean() > 0.01 * scale  # not one vector for every image
    np.testing.assert_allclose(x, reference, rtol=1e-4, atol=1e-5 * scale)
    assert printed.strip() == (
        f"wrote {photos / 'emb.npz'}: 9 images, {x.shape[1]} dims (resnet50, random "
        f"weights, {SIZE}x{SIZE}), 3 classes"
    )


def test_embed_labels_come_from_the_class_folders(embedded):
    arrays, _ = embedded
    assert arrays["y_db"].dtype == np.int64 and arrays["class_names"].dtype.kind == "U"
    assert list(arrays["class_names"]) == sorted(COLOURS)
    folders = [os.path.basename(os.path.dirname(s)) for s in arrays["sources"]]
    assert [arrays["class_names"][y] for y in arrays["y_db"]] == folders
    assert arrays["y_db"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_embed_of_a_glob_has_no_labels(photos, capsys):
    out = photos / "glob.npz"
    assert _embed("--images", photos / "photos" / "red" / "*.png", "--output", out) == 0
    with np.load(out) as data:
        assert sorted(data) == ["sources", "x_db"] and data["x_db"].shape[0] == 1
    assert "1 images" in capsys.readouterr().out


def test_embed_refuses_an_unknown_backbone(photos, capsys):
    out = photos / "unknown.npz"
    argv = ["embed", "--backbone", "vgg16", "--images", photos / "photos", "--output", out]
    assert cli.main([str(a) for a in argv]) == 2
    line = _error(capsys)
    assert "unknown backbone 'vgg16'" in line and "resnet50" in line
    assert not out.exists()


def test_embed_never_overwrites_an_input(photos, capsys, tmp_path):
    image = photos / "photos" / "red" / "red_0.jpg"
    before = image.read_bytes()
    assert _embed("--images", photos / "photos", "--output", image) == 2
    assert "refusing" in _error(capsys) and image.read_bytes() == before
    # nor the weights file it reads
    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(b"weights")
    argv = ["--images", photos / "photos", "--output", weights]
    assert (
        cli.main(
            ["embed", "--backbone", "resnet50", "--backbone-weights", str(weights)]
            + [str(a) for a in argv]
        )
        == 2
    )
    line = _error(capsys)
    assert "is the input --backbone-weights" in line and weights.read_bytes() == b"weights"


def test_embed_refuses_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert _embed("--images", tmp_path / "empty", "--output", tmp_path / "e.npz") == 2
    assert "no image files" in _error(capsys) and not (tmp_path / "e.npz").exists()


def test_embed_refuses_class_folders_mixed_with_unlabeled_images(photos, tmp_path, capsys):
    _write_images(tmp_path / "pool", 1, np.random.default_rng(1))
    loose = tmp_path / "loose"
    loose.mkdir()
    os.replace(tmp_path / "pool" / "red" / "red_0.jpg", loose / "x.jpg")
    argv = ["--images", photos / "photos", "--images", loose, "--output", tmp_path / "m.npz"]
    assert _embed(*argv) == 2
    assert "without a class" in _error(capsys) and not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("damage", ["header", "pixels"])
def test_embed_names_an_unreadable_file_or_skips_it(photos, tmp_path, capsys, damage):
    folder = tmp_path / "photos"
    _write_images(folder, 2, np.random.default_rng(2))
    bad = folder / "green" / "green_1.png"
    data = bad.read_bytes()
    # a PNG that is not one / one whose header reads but whose pixels do not decode
    bad.write_bytes(b"not an image" * 8 if damage == "header" else data[: len(data) // 2])
    out = tmp_path / "emb.npz"
    assert _embed("--images", folder, "--output", out) == 2
    assert "green_1.png" in _error(capsys) and not out.exists()
    assert _embed("--images", folder, "--output", out, "--skip-unreadable") == 0
    captured = capsys.readouterr()
    assert "green_1.png" in captured.err and "1 unreadable file skipped" in captured.err
    assert "5 images" in captured.out
    with np.load(out) as arrays:
        assert arrays["x_db"].shape[0] == 5 and str(bad) not in arrays["sources"]
        assert arrays["y_db"].tolist() == [0, 0, 1, 2, 2]


def _write_digits(folder, per_class):
    """The first `per_class` packaged digits of each class as PNG files in class folders 0..9."""
    images, labels = digits.load_images(SIZE)
    for c in range(10):
        os.makedirs(folder / str(c))
        for i in np.flatnonzero(labels == c)[:per_class]:
            tf.io.write_file(str(folder / str(c) / f"{i:04d}.png"), tf.io.encode_png(images[i]))


def test_embed_then_train_and_evaluate_on_the_embeddings(tmp_path, capsys):
    _write_digits(tmp_path / "digits", 30)
    emb, run = tmp_path / "emb.npz", tmp_path / "run"
    assert _embed("--images", tmp_path / "digits", "--output", emb, "--batch-size", 50) == 0
    with np.load(emb) as arrays:
        assert arrays["x_db"].shape[0] == 300 and np.bincount(arrays["y_db"]).tolist() == [30] * 10
        width = arrays["x_db"].shape[1]
    argv = ["train", "--data", f"npz:{emb}", "--backbone", "mlp", "--output", run]
    argv += ["--epochs", "2", "--batch-size", "20", "--n-book", "3", "--n-word", "4"]
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--model", run / "model.keras", "--data", f"npz:{emb}", "--json", report]
    assert cli.main([str(a) for a in argv]) == 0
    result = json.loads(report.read_text())
    assert 0.0 < result["mAP"] <= 1.0 and result["bits"] == 6
    assert result["n_query"] + result["n_database"] <= 300
    from gpq_keras.model import load_gpq

    assert load_gpq(run / "model.keras").gpq_config.input_dim == width
