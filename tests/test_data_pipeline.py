"""The input pipelines, tf.data and NumPy (`keras.utils.PyDataset`): augmentation as claimed, two
independent streams, evaluation input; the two give batches of the same distribution."""

import numpy as np
import pytest

from gpq_keras import image_converter
from gpq_keras.data import (
    ArrayBatches,
    Split,
    eval_dataset,
    numpy_pipeline,
    tf_pipeline,
    train_input,
)
from gpq_keras.data.split import steps_per_epoch

MEAN, STD = np.array(image_converter.CHANNEL_MEAN), np.array(image_converter.CHANNEL_STD)
PIPELINES = ["tf.data", "numpy"]


def take(kind, split, count, **options):
    """([(x_l, x_u, y)] of the first `count` batches as NumPy, steps_per_epoch) of pipeline
    `kind`."""
    dataset, steps = train_input(split, pipeline=kind, **options)
    items = (dataset[i] for i in range(count)) if kind == "numpy" else dataset.take(count)
    return [
        (np.asarray(x["labeled"]), np.asarray(x["unlabeled"]), np.asarray(y)) for x, y in items
    ], steps


def augment_numpy(batch, seed, fill):
    return numpy_pipeline.augment_batch(batch, np.random.default_rng(seed), fill=fill)


def augment_tf(batch, seed, fill):
    return tf_pipeline.augment_batch(batch, seed=seed, fill=fill).numpy()


def candidates(image, padding, fill=0.0):
    """Every result the augmentation may give for `image`: {(flip, dy, dx): array} (NumPy
    reference)."""
    h, w = image.shape[:2]
    out = {}
    for flip in (False, True):
        source = image[:, ::-1] if flip else image
        padded = np.empty((h + 2 * padding, w + 2 * padding) + image.shape[2:], image.dtype)
        padded[...] = fill
        padded[padding : padding + h, padding : padding + w] = source
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                out[(flip, dy, dx)] = padded[dy : dy + h, dx : dx + w]
    return out


def draws(augment, seed, fill=0.0, count=4000):
    """The (flip, dy, dx) of each of `count` augmentations of one image; each output must be exactly
    one flip + crop of the padded image (NumPy reference `candidates`)."""
    image = np.arange(1, 8 * 8 * 2 + 1, dtype=np.float32).reshape(
        8, 8, 2
    )  # every pixel unique, > 0
    batch = np.repeat(image[None], count, axis=0)
    out = augment(batch, seed, fill)
    assert out.shape == batch.shape and out.dtype == np.float32
    lookup = {v.tobytes(): k for k, v in candidates(image, 4, np.asarray(fill, np.float32)).items()}
    found = [lookup.get(o.tobytes()) for o in out]
    assert None not in found
    return np.array(found, dtype=int)


@pytest.mark.parametrize("augment", [augment_tf, augment_numpy])
@pytest.mark.parametrize(
    "fill", [0.0, (300.5, -2.0)]
)  # normalised images; a fill per channel (pixels)
def test_augment_batch_is_a_flip_then_a_padded_crop(augment, fill):
    found = draws(augment, [3, 4], fill, count=2000)
    assert (
        len({tuple(f) for f in found}) == 2 * 9 * 9
    )  # every flip and offset occurs (2000 draws of 162)
    assert 0.4 < found[:, 0].mean() < 0.6
    # The same seed gives the same batch, another seed another one.
    batch = np.random.default_rng(0).normal(size=(50, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(augment(batch, [3, 4], fill), augment(batch, [3, 4], fill))
    assert not np.array_equal(augment(batch, [3, 4], fill), augment(batch, [5, 6], fill))


def test_numpy_and_tf_augmentations_draw_from_the_same_distribution():
    """Flip and the two offsets: uniform (chi-square against 1/2 and 1/9 per value) and independent,
    for both; and the two pipelines' frequencies agree (two-sample chi-square over the 162
    outcomes)."""
    from scipy import stats

    counts = {}
    for name, augment in (("tf", augment_tf), ("numpy", augment_numpy)):
        found = draws(augment, [11, 12], count=16200)
        for column, values in ((0, 2), (1, 9), (2, 9)):
            observed = np.bincount(found[:, column], minlength=values)
            assert stats.chisquare(observed).pvalue > 1e-4, (name, column, observed)
        counts[name] = np.bincount(found[:, 0] * 81 + found[:, 1] * 9 + found[:, 2], minlength=162)
        assert stats.chisquare(counts[name]).pvalue > 1e-4, (
            name
        )  # the joint: independent and uniform
    table = np.stack([counts["tf"], counts["numpy"]])
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_augment_shifts_a_known_pattern():
    image = np.zeros((32, 32, 3), np.float32)
    image[10, 20] = 1.0  # one bright pixel
    image[10, 21] = 2.0  # and its right neighbour, to tell a flip
    moves = set()
    for seed in range(40):
        out = tf_pipeline.augment(image, seed=[seed, 0]).numpy()[..., 0]
        ((y, x),) = np.argwhere(out == 1.0)  # still exactly one, moved by at most 4
        ((y2, x2),) = np.argwhere(out == 2.0)
        flipped = x2 == x - 1
        assert y2 == y and (flipped or x2 == x + 1)
        dy, dx = y - 10, x - (11 if flipped else 20)  # 11 = 31 - 20: the flipped column
        assert abs(dy) <= 4 and abs(dx) <= 4
        moves.add((flipped, dy, dx))
    assert len(moves) > 20 and {m[0] for m in moves} == {False, True}


def split_of_constant_images(num_labeled=40, num_unlabeled=60, size=32, width=None):
    """Image i has value (i % 250) + 1 everywhere (labeled: value = label * 10 + 1); images are
    size x size, or size x width."""
    y = np.arange(num_labeled) % 10
    values = (y * 10 + 1).astype(np.uint8)
    hw = (size, width or size)
    x_l = np.broadcast_to(values[:, None, None, None], (num_labeled, *hw, 3)).copy()
    ids_u = (np.arange(num_unlabeled) % 250 + 1).astype(np.uint8)
    x_u = np.broadcast_to(ids_u[:, None, None, None], (num_unlabeled, *hw, 3)).copy()
    return Split(
        x_query=x_l[:5],
        y_query=y[:5],
        x_db=x_u,
        y_db=np.zeros(num_unlabeled, np.int64),
        x_labeled=x_l,
        y_labeled=y,
    )


def pixel_values(batch):
    """The pixel value each (constant) image had, read at the centre."""
    centre = batch[:, batch.shape[1] // 2, batch.shape[2] // 2]
    return np.round(centre)[:, 0].astype(int)


@pytest.mark.parametrize("kind", PIPELINES)
def test_train_dataset_structure_and_label_alignment(kind):
    split = split_of_constant_images()
    dataset, steps = train_input(split, pipeline=kind, batch_size=8, seed=1)
    assert steps == 5 == steps_per_epoch(split, 8)
    x, y = dataset[0] if kind == "numpy" else next(iter(dataset))
    assert set(x) == {"labeled", "unlabeled"}
    assert x["labeled"].shape == (8, 32, 32, 3) and x["unlabeled"].shape == (8, 32, 32, 3)
    assert np.asarray(x["labeled"]).dtype == np.float32 and np.asarray(y).dtype == np.int64
    for x_l, _, y in take(kind, split, 10, batch_size=8, seed=1)[
        0
    ]:  # augmented, shuffled: labels still
        np.testing.assert_array_equal(pixel_values(x_l), y * 10 + 1)  # belong to their images


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize("normalized", [False, True])
def test_padding_is_zero_after_normalisation(normalized, kind):
    """Pixels are padded with the channel mean, which the model's normalisation makes 0
    (`normalized=True`: normalised images padded with 0, the original's order)."""
    split = split_of_constant_images()
    batches, _ = take(kind, split, 5, batch_size=20, seed=2, normalized=normalized)
    padded = 0
    fill = np.zeros(3, np.float32) if normalized else np.asarray(MEAN, np.float32)
    if not normalized:
        np.testing.assert_array_equal(tf_pipeline.normalize(fill).numpy(), 0.0)
    for _, x_u, _ in batches:
        for image in x_u:
            value = image[16, 16]
            border = np.all(image == fill, axis=-1)  # pixels from the padding
            assert np.allclose(image[~border], value, atol=1e-6)
            rows, cols = np.flatnonzero(border.all(1)), np.flatnonzero(border.all(0))
            for edge in (rows, cols):  # whole rows/columns at one edge, at most 4 wide
                assert len(edge) <= 4
                assert len(edge) == 0 or edge.tolist() in (
                    list(range(len(edge))),
                    list(range(32 - len(edge), 32)),
                )
            assert border.sum() == 32 * (len(rows) + len(cols)) - len(rows) * len(cols)
            padded += border.any()
    assert padded > 80  # 100 images, each padded unless its offset is (4, 4)


def test_augmentation_padding_is_an_eighth_of_the_smaller_side():
    pad = image_converter.augmentation_padding
    assert [pad(s, s) for s in (4, 8, 16, 32, 64, 128, 224)] == [1, 1, 2, 4, 8, 16, 28]
    assert pad(24, 48) == pad(48, 24) == 3 and pad(32, 32) == image_converter.PADDING == 4


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize("hw", [(64, 64), (16, 40)])
def test_the_training_padding_scales_with_the_image_size(kind, hw):
    """At 64x64 the border is up to 8 pixels wide, at 16x40 up to 2 (min side // 8), on both axes:
    whole rows and columns of the channel mean at one edge, every width up to that seen."""
    height, width = hw
    padding = image_converter.augmentation_padding(height, width)
    split = split_of_constant_images(size=height, width=width)
    images = np.concatenate([x_u for _, x_u, _ in take(kind, split, 5, batch_size=20, seed=6)[0]])
    widths = set()
    for image in images:
        border = np.all(image == np.float32(MEAN), axis=-1)
        rows, cols = np.flatnonzero(border.all(1)), np.flatnonzero(border.all(0))
        for edge, side in ((rows, height), (cols, width)):
            assert len(edge) <= padding
            assert len(edge) == 0 or edge.tolist() in (
                list(range(len(edge))),
                list(range(side - len(edge), side)),
            )
            widths.add(len(edge))
        assert border.sum() == width * len(rows) + height * len(cols) - len(rows) * len(cols)
    assert widths == set(range(padding + 1))


@pytest.mark.parametrize("kind", PIPELINES)
def test_streams_are_shuffled_independently_and_cover_each_pass(kind):
    split = split_of_constant_images(num_labeled=40, num_unlabeled=40)
    split.x_unlabeled = split.x_labeled.copy()  # same images in both streams
    batches, steps = take(kind, split, 4, batch_size=10, seed=0, augmented=False)
    assert steps == 4
    lab = np.concatenate([pixel_values(x_l) for x_l, _, _ in batches])
    unl = np.concatenate([pixel_values(x_u) for _, x_u, _ in batches])
    expected = np.sort(split.y_labeled * 10 + 1)
    np.testing.assert_array_equal(np.sort(lab), expected)  # one pass = each image once
    np.testing.assert_array_equal(np.sort(unl), expected)
    assert not np.array_equal(lab, unl)
    assert not np.array_equal(lab, split.y_labeled * 10 + 1)  # shuffled


@pytest.mark.parametrize("kind", PIPELINES)
def test_seed_makes_the_stream_reproducible(kind):
    split = split_of_constant_images()

    def first(seed):
        ((x_l, x_u, y),) = take(kind, split, 1, batch_size=8, seed=seed)[0]
        return np.concatenate([x_l.ravel(), x_u.ravel(), y])

    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(7), first(8))


@pytest.mark.parametrize("kind", PIPELINES)
def test_batch_size_is_capped_and_multi_hot_labels_pass(kind):
    split = split_of_constant_images(num_labeled=12, num_unlabeled=30)
    split.y_labeled = np.eye(21, dtype=np.uint8)[np.arange(12)]
    split.num_classes = 21
    ((x_l, x_u, y),) = (batches := take(kind, split, 1, batch_size=500))[0]
    assert x_l.shape[0] == x_u.shape[0] == 12 and batches[1] == 1 == steps_per_epoch(split, 500)
    assert y.shape == (12, 21) and y.dtype == np.uint8
    with pytest.raises(ValueError, match="no labeled"):
        train_input(
            Split(x_query=split.x_db, y_query=split.y_db, x_db=split.x_db, y_db=split.y_db),
            pipeline=kind,
        )
    split.y_labeled = np.full(12, 3)
    split.num_classes = 5
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_input(split, pipeline=kind)


def test_eval_dataset_is_ordered_pixels_without_augmentation():
    images = np.random.default_rng(0).integers(0, 256, (25, 32, 32, 3), dtype=np.uint8)
    batches = [b.numpy() for b in eval_dataset(images, batch_size=10)]
    assert [len(b) for b in batches] == [10, 10, 5] and batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(batches), images.astype(np.float32))
    floats = [b.numpy() for b in eval_dataset(images.astype(np.float64), batch_size=10)]
    np.testing.assert_array_equal(
        np.concatenate(floats), images.astype(np.float32)
    )  # no guessing by dtype
    # normalized=True: the contract of models saved before the model normalised (uint8 normalised
    # here).
    legacy = np.concatenate(
        [b.numpy() for b in eval_dataset(images, batch_size=10, normalized=True)]
    )
    np.testing.assert_allclose(legacy, (images.astype(np.float64) - MEAN) / STD, atol=1e-5)
    np.testing.assert_allclose(image_converter.denormalize(legacy), images / 255.0, atol=1e-5)
    # The NumPy version (a PyDataset): the same batches.
    for normalized in (False, True):
        ours = ArrayBatches(images, batch_size=10, normalized=normalized)
        theirs = [b.numpy() for b in eval_dataset(images, batch_size=10, normalized=normalized)]
        assert len(ours) == 3
        for i, batch in enumerate(theirs):
            np.testing.assert_allclose(ours[i], batch, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", PIPELINES)
def test_a_batch_never_holds_an_image_twice(kind):
    """43 labeled / 67 unlabeled images at batch 10: passes do not divide evenly, batches never span
    two."""
    split = split_of_constant_images(num_labeled=43, num_unlabeled=67)
    split.y_labeled, split.num_classes = (
        np.arange(43),
        43,
    )  # labeled image i: its label, to identify it
    split.x_unlabeled = np.broadcast_to(
        np.arange(1, 68, dtype=np.uint8)[:, None, None, None], (67, 32, 32, 3)
    )
    batches, steps = take(kind, split, 40, batch_size=10, seed=5, augmented=False)
    assert steps == 4
    unlabeled_passes = []
    for _, x_u, y in batches:
        assert len(set(y.tolist())) == 10
        ids = pixel_values(x_u)
        assert len(set(ids.tolist())) == 10
        unlabeled_passes.append(set(ids.tolist()))
    for first in range(0, 36, 6):  # 6 batches per unlabeled pass: 60 distinct images, 7 left out
        assert len(set().union(*unlabeled_passes[first : first + 6])) == 60


@pytest.mark.parametrize("kind", PIPELINES)
def test_start_step_resumes_the_same_batches(kind):
    split = split_of_constant_images(num_labeled=43, num_unlabeled=67)
    whole, _ = take(kind, split, 20, batch_size=10, seed=3)
    resumed, _ = take(kind, split, 7, batch_size=10, seed=3, start_step=13)
    for a, b in zip(whole[13:], resumed):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_the_numpy_pipeline_has_the_statistics_of_the_tf_data_one():
    """Digits through both pipelines, 40 batches of 100 + 100 each: the per-pixel means of the
    labeled and the unlabeled images, the share of padded (channel-mean) pixels and the label
    frequencies agree within sampling error; un-augmented, one pass of each holds the same
    images."""
    from gpq_keras.data import load_data

    split = load_data("digits")
    stats = {}
    for kind in PIPELINES:
        batches, steps = take(kind, split, 40, batch_size=100, seed=4)
        x_l = np.concatenate([b[0] for b in batches])
        x_u = np.concatenate([b[1] for b in batches])
        y = np.concatenate([b[2] for b in batches])
        fill = np.all(x_u == np.float32(MEAN), axis=-1)
        stats[kind] = {
            "steps": steps,
            "labeled": x_l.mean(0),
            "unlabeled": x_u.mean(0),
            "fill": fill.mean(),
            "fill_rows": fill.mean((0, 2)),
            "labels": np.bincount(y, minlength=10) / len(y),
        }
    a, b = stats["tf.data"], stats["numpy"]
    assert a["steps"] == b["steps"]
    for key in (
        "labeled",
        "unlabeled",
    ):  # 4,000 images a pixel: the means' sampling error is ~1.5 levels
        assert np.abs(a[key] - b[key]).mean() < 2.0, key
        assert np.abs(a[key] - b[key]).max() < 12.0, key
    assert a["fill"] == pytest.approx(b["fill"], abs=0.01)
    np.testing.assert_allclose(
        a["fill_rows"], b["fill_rows"], atol=0.03
    )  # the border's shape by row
    np.testing.assert_allclose(a["labels"], b["labels"], atol=0.03)
    one_pass = {
        kind: take(kind, split, 1, batch_size=len(split.x_labeled), augmented=False, seed=1)[0][0][
            0
        ]
        for kind in PIPELINES
    }  # the labeled set (the smaller) in one batch
    assert sorted(x.tobytes() for x in one_pass["tf.data"]) == sorted(
        x.tobytes() for x in one_pass["numpy"]
    )


def test_the_pipeline_choice_resolves_and_a_bad_one_is_named():
    from gpq_keras.data import resolve_pipeline

    assert resolve_pipeline("auto") == "tf.data"  # TensorFlow is installed here
    assert [resolve_pipeline(p) for p in PIPELINES] == PIPELINES
    with pytest.raises(
        ValueError, match="Unknown input pipeline 'tfdata'; expected one of auto, tf.data, numpy"
    ):
        train_input(split_of_constant_images(), pipeline="tfdata")


def test_eval_input_gives_the_same_batches_on_both_pipelines():
    from gpq_keras.data import eval_input, eval_pydataset

    images = np.random.default_rng(3).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    for normalized in (False, True):
        tf_batches = [b.numpy() for b in eval_input(images, "tf.data", 10, normalized=normalized)]
        numpy_batches = eval_input(images, "numpy", 10, normalized=normalized)
        assert isinstance(numpy_batches, ArrayBatches) and len(numpy_batches) == 3
        assert [len(b) for b in tf_batches] == [10, 10, 3]
        for i, batch in enumerate(tf_batches):
            np.testing.assert_allclose(numpy_batches[i], batch, rtol=1e-6, atol=1e-5)
        want = image_converter.normalize_array(images) if normalized else images.astype(np.float32)
        np.testing.assert_allclose(np.concatenate(tf_batches), want, rtol=1e-6, atol=1e-5)
    pydataset = eval_pydataset(images, 10, True)
    assert isinstance(pydataset, ArrayBatches) and pydataset.batch_size == 10
    assert [len(b) for b in eval_input(images, batch_size=10)] == [10, 10, 3]  # auto: tf.data
    with pytest.raises(ValueError, match="Unknown input pipeline 'tfdata'"):
        eval_input(images, "tfdata")
