"""Image files streamed through the input pipelines (`ImageFiles`): each batch read when drawn, the
same batches, training and features as the same images held in arrays, a bad file named, and
memory bounded by the batch, not by the collection."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from gpq_keras import GPQ, GPQConfig
from gpq_keras.data import Split, eval_input, train_input
from gpq_keras.data.image_files import ImageFiles, reraise_file_errors
from gpq_keras.files import UnreadableFile

backends = pytest.mark.backends  # also on JAX (`make test-jax`)
PIPELINES = ["tf.data", "numpy"]
SIZE = 16
TINY = GPQConfig(
    num_subspaces=2,
    num_codewords=4,
    subspace_dim=4,
    num_classes=3,
    image_shape=(SIZE, SIZE, 3),
    filters=(4, 4, 4, 4),
)


def write_png_images(folder, images):
    """Each image as a PNG (lossless, at its own size, so it decodes to the same pixels) -> the
    paths, in order."""
    paths = []
    for i, image in enumerate(images):
        path = os.path.join(folder, f"image_{i:03d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def jpeg_bytes(image, quality=90):
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """(uint8 images (40, 16, 16, 3), ImageFiles of them as PNG files)."""
    images = np.random.default_rng(0).integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8)
    paths = write_png_images(str(tmp_path_factory.mktemp("pngs")), images)
    return images, ImageFiles(paths, SIZE)


def splits_of(images, files, labeled=16):
    """The same hand-built training split twice: (arrays, ImageFiles); 16 labeled of 3 classes,
    all 40 the unlabeled set and the database."""
    y = np.arange(len(images)) % 3
    parts = [
        dict(x_db=x, x_labeled=x[:labeled]) for x in (images, files)
    ]  # the labeled images are the first `labeled` of each
    return [
        Split(
            x_query=None,
            y_query=None,
            y_db=y,
            y_labeled=y[:labeled],
            num_classes=3,
            name="hand-built",
            **part,
        )
        for part in parts
    ]


def batches(kind, split, count, **options):
    """The first `count` training batches of pipeline `kind` as NumPy [(x_l, x_u, y)]."""
    dataset, _ = train_input(split, pipeline=kind, **options)
    items = (dataset[i] for i in range(count)) if kind == "numpy" else dataset.take(count)
    return [(np.asarray(x["labeled"]), np.asarray(x["unlabeled"]), np.asarray(y)) for x, y in items]


def eval_batches(kind, images, batch_size, **options):
    dataset = eval_input(images, kind, batch_size, **options)
    if kind == "numpy":
        return [dataset[i] for i in range(len(dataset))]
    return [np.asarray(b) for b in dataset]


@backends
def test_png_files_decode_to_their_own_pixels(pngs):
    images, files = pngs
    np.testing.assert_array_equal(files.read(), images)  # what makes the comparisons below exact


@backends
@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize("augmented", [False, True])
def test_streamed_batches_are_the_array_batches(pngs, kind, augmented):
    """Same seed, same step: the same pixels, labels and order, augmentation included; resuming at
    step 5 gives batches 5.. of the whole run."""
    arrays, files = splits_of(*pngs)
    options = dict(batch_size=6, seed=4, augmented=augmented)
    want = batches(kind, arrays, 9, **options)
    got = batches(kind, files, 9, **options)
    resumed = batches(kind, files, 4, start_step=5, **options)
    for a, b in zip(want, got):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and u.shape == v.shape
            np.testing.assert_array_equal(u, v)
    for a, b in zip(want[5:], resumed):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    normalized = batches(kind, files, 2, normalized=True, **options)
    for a, b in zip(batches(kind, arrays, 2, normalized=True, **options), normalized):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_files_are_read_a_batch_at_a_time_when_drawn(pngs, kind, monkeypatch):
    """No read of more than one batch, none at all before the first batch is drawn."""
    streamed = splits_of(*pngs)[1]
    reads = []
    original = ImageFiles.read

    def read(self, indices=None, **options):
        reads.append(len(self) if indices is None else len(indices))
        return original(self, indices, **options)

    monkeypatch.setattr(ImageFiles, "read", read)
    dataset, _ = train_input(streamed, pipeline=kind, batch_size=6, seed=1)
    if kind == "tf.data":
        assert reads == []  # made, not drawn
        next(iter(dataset))
    else:
        dataset[0]
    assert reads and max(reads) == 6
    reads.clear()
    assert sum(len(b) for b in eval_batches(kind, streamed.x_db, 7)) == 40
    assert max(reads) == 7 and sum(reads) == 40


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_eval_input_of_files_is_the_eval_input_of_their_images(pngs, kind):
    images, files = pngs
    for normalized in (False, True):
        want = eval_batches(kind, images, 7, normalized=normalized)
        got = eval_batches(kind, files, 7, normalized=normalized)
        assert [len(b) for b in got] == [7] * 5 + [5]
        for a, b in zip(want, got):
            assert b.dtype == np.float32
            np.testing.assert_array_equal(a, b)


def trained_weights(kind, split, initial, steps=3):
    model = GPQ(TINY)
    model.set_weights(initial)
    model.compile()
    dataset, _ = train_input(split, pipeline=kind, batch_size=8, seed=2, augmented=False)
    with reraise_file_errors():
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return model.get_weights()


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_training_through_files_gives_the_weights_of_training_on_arrays(pngs, kind):
    arrays, files = splits_of(*pngs)
    initial = GPQ(TINY).get_weights()
    want = trained_weights(kind, arrays, initial)
    got = trained_weights(kind, files, initial)
    assert any(not np.array_equal(w, w0) for w, w0 in zip(want, initial))  # it trained
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_encode_reads_files_at_the_models_size(pngs, kind):
    images, files = pngs
    model = GPQ(TINY)
    want = model.encode(images, batch_size=7)
    model.input_pipeline = kind  # the pipeline encode batches with (the backend's by default)
    np.testing.assert_array_equal(model.encode(files, batch_size=7), want)
    dataset = eval_input(files, kind, 9)  # a dataset of file batches is used as it is
    np.testing.assert_allclose(model.encode(dataset), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"^images of shape \(32, 32, 3\) given, but the model expects \(16, 16, 3\)$",
    ):
        model.encode(files.with_size(32))


@pytest.fixture
def bad_files(tmp_path, pngs):
    """ImageFiles of 12 PNGs with a truncated JPEG at position 7 -> (files, the bad one's path)."""
    images, files = pngs
    bad = tmp_path / "broken.jpg"
    data = jpeg_bytes(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), np.uint8))
    bad.write_bytes(data[: len(data) // 2])  # the header whole: found out when it is decoded
    paths = list(files.paths[:12])
    paths[7] = str(bad)
    return ImageFiles(paths, SIZE), str(bad)


def one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{path}: not a decodable image")


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_a_bad_file_mid_stream_is_named_through_fit(bad_files, kind):
    files, path = bad_files
    y = np.arange(12) % 3
    split = Split(None, None, files, y, files, y, num_classes=3, name="bad")
    model = GPQ(TINY)
    model.compile()
    dataset, steps = train_input(split, pipeline=kind, batch_size=4, seed=0)
    assert steps == 3  # one epoch draws every labeled image, the broken one too
    with pytest.raises(UnreadableFile) as excinfo, reraise_file_errors():
        model.fit(dataset, steps_per_epoch=steps, epochs=2, verbose=0)
    one_line_error(excinfo, path)


@backends
@pytest.mark.parametrize("kind", PIPELINES)
def test_a_bad_or_missing_file_mid_stream_is_named_through_encode(bad_files, kind, tmp_path):
    files, path = bad_files
    model = GPQ(TINY)
    model.input_pipeline = kind
    good = files[:7]
    want = model.encode(good.read())
    with pytest.raises(UnreadableFile) as excinfo:
        model.encode(files, batch_size=4)  # the second batch holds it
    one_line_error(excinfo, path)
    with pytest.raises(UnreadableFile) as excinfo:
        model.encode(eval_input(files, kind, 5))
    one_line_error(excinfo, path)
    with pytest.raises(UnreadableFile) as excinfo:
        model.encode(files[6:], batch_size=4)  # the first batch holds it
    one_line_error(excinfo, path)
    missing = str(tmp_path / "gone.png")
    files = ImageFiles([*files.paths[:7], missing, *files.paths[8:]], SIZE)
    with pytest.raises(FileNotFoundError, match=f"^image not found: {missing}$"):
        model.encode(files, batch_size=4)
    np.testing.assert_array_equal(model.encode(good), want)  # whole after the errors (JAX too)


# --- memory: a child process over 400 and 4,000 files ---------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    from gpq_keras import GPQ, GPQConfig
    from gpq_keras.data import Split, train_input
    from gpq_keras.data.image_files import ImageFiles, reraise_file_errors

    folder, count, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    names = sorted(os.listdir(folder))[:count]
    files = ImageFiles([os.path.join(folder, n) for n in names], 128)
    y = np.arange(count) % 4
    split = Split(None, None, files, y, files[:48], y[:48], num_classes=4, name="files")
    config = GPQConfig(num_subspaces=2, num_codewords=4, subspace_dim=4, num_classes=4,
                       image_shape=(128, 128, 3), filters=(4, 4, 4, 4))
    model = GPQ(config)
    model.compile()
    if what == "index":  # what `gpq index build --images` does
        from gpq_keras.retrieval import PQIndex
        index = PQIndex.from_model(model)
        index.add_files(list(files.paths))
        assert index.ntotal == count
        print("encoded", index.ntotal)
        sys.exit(0)
    dataset, steps = train_input(split, batch_size=16, seed=0)
    with reraise_file_errors():
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    features = model.encode(split.x_db, batch_size=50)
    assert features.shape == (count, 8) and np.isfinite(features).all()
    print("encoded", len(features))
    """
)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """4,000 smooth 256x256 JPEGs (each a different colour gradient: small files, quick to make)."""
    folder = tmp_path_factory.mktemp("jpegs")
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    rng = np.random.default_rng(5)
    for i in range(4000):
        low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        image = low + (high - low) * ramp[:, None, None] * ramp[None, :, None] ** (1 + i % 3)
        (folder / f"{i:05d}.jpg").write_bytes(jpeg_bytes(image.astype(np.uint8), 75))
    return str(folder)


def peak_rss_mib(folder, count, tmp_path, what="train"):
    """Peak resident memory (MiB) of a child that trains an epoch on `count` files and encodes them
    all, or (`what="index"`) indexes them (`PQIndex.add_files`) (os.wait4's rusage: ru_maxrss, KiB
    on Linux)."""
    log = tmp_path / f"child_{what}_{count}.log"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", MEMORY_CHILD, folder, str(count), what],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    assert child.returncode == 0 and f"encoded {count}" in text, text[-3000:]
    return usage.ru_maxrss / 1024


@pytest.mark.large
def test_peak_memory_does_not_grow_with_the_number_of_files(jpeg_folder, tmp_path):
    """400 and 4,000 files at 128x128: holding 4,000 decoded would take 196 MB (uint8) more than
    400; streamed, the peaks differ by far less."""
    decoded = 3600 * 128 * 128 * 3 / 2**20  # 169 MiB (196 MB) more as one uint8 array
    for what in ("train", "index"):
        small = peak_rss_mib(jpeg_folder, 400, tmp_path, what)
        large = peak_rss_mib(jpeg_folder, 4000, tmp_path, what)
        print(f"peak RSS, {what}: {small:.0f} MiB over 400 files, {large:.0f} MiB over 4,000")
        assert large - small < 150 * 1e6 / 2**20 < decoded, (what, small, large)
