"""The tf.data pipelines: augmentation as claimed, two independent streams, evaluation input."""

import numpy as np
import pytest
import tensorflow as tf

from gpq_keras.data import Split, eval_dataset, pipeline, train_dataset

MEAN, STD = np.array(pipeline.CHANNEL_MEAN), np.array(pipeline.CHANNEL_STD)


def candidates(image, padding, fill=0.0):
    """Every result the augmentation may give for `image`: {(flip, dy, dx): array} (NumPy reference)."""
    h, w = image.shape[:2]
    out = {}
    for flip in (False, True):
        source = image[:, ::-1] if flip else image
        padded = np.empty((h + 2 * padding, w + 2 * padding) + image.shape[2:], image.dtype)
        padded[...] = fill
        padded[padding:padding + h, padding:padding + w] = source
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                out[(flip, dy, dx)] = padded[dy:dy + h, dx:dx + w]
    return out


@pytest.mark.parametrize("fill", [0.0, (300.5, -2.0)])  # normalised images; a fill per channel (pixels)
def test_augment_batch_is_a_flip_then_a_padded_crop(fill):
    image = np.arange(1, 8 * 8 * 2 + 1, dtype=np.float32).reshape(8, 8, 2)  # every pixel unique, > 0
    batch = np.repeat(image[None], 2000, axis=0)
    out = pipeline.augment_batch(batch, seed=[3, 4], fill=fill).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    table = candidates(image, 4, np.asarray(fill, np.float32))
    keys = {k: v.tobytes() for k, v in table.items()}
    lookup = {v: k for k, v in keys.items()}
    found = [lookup.get(o.tobytes()) for o in out]
    assert None not in found  # each output is exactly one flip + crop of the zero-padded image
    assert len(set(found)) == 2 * 9 * 9  # every flip and offset occurs (2000 draws of 162)
    flips = np.mean([f[0] for f in found])
    assert 0.4 < flips < 0.6
    # The same seed gives the same batch, another seed another one.
    np.testing.assert_array_equal(pipeline.augment_batch(batch[:50], seed=[3, 4], fill=fill).numpy(),
                                  pipeline.augment_batch(batch[:50], seed=[3, 4], fill=fill).numpy())
    assert not np.array_equal(out[:50], pipeline.augment_batch(batch[:50], seed=[5, 6], fill=fill).numpy())


def test_augment_shifts_a_known_pattern():
    image = np.zeros((32, 32, 3), np.float32)
    image[10, 20] = 1.0  # one bright pixel
    image[10, 21] = 2.0  # and its right neighbour, to tell a flip
    moves = set()
    for seed in range(40):
        out = pipeline.augment(image, seed=[seed, 0]).numpy()[..., 0]
        (y, x), = np.argwhere(out == 1.0)  # still exactly one, moved by at most 4
        (y2, x2), = np.argwhere(out == 2.0)
        flipped = x2 == x - 1
        assert y2 == y and (flipped or x2 == x + 1)
        dy, dx = y - 10, x - (11 if flipped else 20)  # 11 = 31 - 20: the flipped column
        assert abs(dy) <= 4 and abs(dx) <= 4
        moves.add((flipped, dy, dx))
    assert len(moves) > 20 and {m[0] for m in moves} == {False, True}


def split_of_constant_images(num_labeled=40, num_unlabeled=60, size=32):
    """Image i has value (i % 250) + 1 everywhere (labeled: value = label * 10 + 1)."""
    y = np.arange(num_labeled) % 10
    values = (y * 10 + 1).astype(np.uint8)
    x_l = np.broadcast_to(values[:, None, None, None], (num_labeled, size, size, 3)).copy()
    ids_u = (np.arange(num_unlabeled) % 250 + 1).astype(np.uint8)
    x_u = np.broadcast_to(ids_u[:, None, None, None], (num_unlabeled, size, size, 3)).copy()
    return Split(x_query=x_l[:5], y_query=y[:5], x_db=x_u, y_db=np.zeros(num_unlabeled, np.int64),
                 x_labeled=x_l, y_labeled=y)


def pixel_values(batch):
    """The pixel value each (constant) image had, read at the centre."""
    centre = batch[:, batch.shape[1] // 2, batch.shape[2] // 2]
    return np.round(centre)[:, 0].astype(int)


def test_train_dataset_structure_and_label_alignment():
    split = split_of_constant_images()
    ds, steps = train_dataset(split, batch_size=8, seed=1)
    assert steps == 5
    (x, y) = next(iter(ds))
    assert set(x) == {"labeled", "unlabeled"}
    assert x["labeled"].shape == (8, 32, 32, 3) and x["unlabeled"].shape == (8, 32, 32, 3)
    assert x["labeled"].dtype == tf.float32 and y.dtype == tf.int64
    for x, y in ds.take(10):  # augmented, shuffled: labels still belong to their images
        np.testing.assert_array_equal(pixel_values(x["labeled"].numpy()), y.numpy() * 10 + 1)


@pytest.mark.parametrize("normalized", [False, True])
def test_padding_is_zero_after_normalisation(normalized):
    """Pixels are padded with the channel mean, which the model's normalisation makes 0 (`normalized=True`:
    normalised images padded with 0, the original's order)."""
    split = split_of_constant_images()
    ds, _ = train_dataset(split, batch_size=20, seed=2, normalized=normalized)
    padded = 0
    fill = np.zeros(3, np.float32) if normalized else np.asarray(MEAN, np.float32)
    if not normalized:
        np.testing.assert_array_equal(pipeline.normalize(fill).numpy(), 0.0)
    for x, _ in ds.take(5):
        for image in x["unlabeled"].numpy():
            value = image[16, 16]
            border = np.all(image == fill, axis=-1)  # pixels from the padding
            assert np.allclose(image[~border], value, atol=1e-6)
            rows, cols = np.flatnonzero(border.all(1)), np.flatnonzero(border.all(0))
            for edge in (rows, cols):  # whole rows/columns at one edge, at most 4 wide
                assert len(edge) <= 4
                assert len(edge) == 0 or edge.tolist() in (list(range(len(edge))),
                                                           list(range(32 - len(edge), 32)))
            assert border.sum() == 32 * (len(rows) + len(cols)) - len(rows) * len(cols)
            padded += border.any()
    assert padded > 80  # 100 images, each padded unless its offset is (4, 4)


def test_streams_are_shuffled_independently_and_cover_each_pass():
    split = split_of_constant_images(num_labeled=40, num_unlabeled=40)
    split.x_unlabeled = split.x_labeled.copy()  # same images in both streams
    ds, steps = train_dataset(split, batch_size=10, seed=0, augmented=False)
    lab, unl = [], []
    for x, _ in ds.take(steps):
        lab.append(pixel_values(x["labeled"].numpy()))
        unl.append(pixel_values(x["unlabeled"].numpy()))
    lab, unl = np.concatenate(lab), np.concatenate(unl)
    expected = np.sort(split.y_labeled * 10 + 1)
    np.testing.assert_array_equal(np.sort(lab), expected)  # one pass = each image once
    np.testing.assert_array_equal(np.sort(unl), expected)
    assert not np.array_equal(lab, unl)
    assert not np.array_equal(lab, split.y_labeled * 10 + 1)  # shuffled


def test_seed_makes_the_stream_reproducible():
    split = split_of_constant_images()

    def first(seed):
        x, y = next(iter(train_dataset(split, batch_size=8, seed=seed)[0]))
        return np.concatenate([x["labeled"].numpy().ravel(), x["unlabeled"].numpy().ravel(), y.numpy()])

    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(7), first(8))


def test_batch_size_is_capped_and_multi_hot_labels_pass():
    split = split_of_constant_images(num_labeled=12, num_unlabeled=30)
    split.y_labeled = np.eye(21, dtype=np.uint8)[np.arange(12)]
    split.num_classes = 21
    ds, steps = train_dataset(split, batch_size=500)
    x, y = next(iter(ds))
    assert x["labeled"].shape[0] == x["unlabeled"].shape[0] == 12 and steps == 1
    assert y.shape == (12, 21) and y.dtype == tf.uint8
    with pytest.raises(ValueError, match="no labeled"):
        train_dataset(Split(x_query=split.x_db, y_query=split.y_db, x_db=split.x_db, y_db=split.y_db))


def test_eval_dataset_is_ordered_pixels_without_augmentation():
    images = np.random.default_rng(0).integers(0, 256, (25, 32, 32, 3), dtype=np.uint8)
    batches = [b.numpy() for b in eval_dataset(images, batch_size=10)]
    assert [len(b) for b in batches] == [10, 10, 5] and batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(batches), images.astype(np.float32))
    floats = [b.numpy() for b in eval_dataset(images.astype(np.float64), batch_size=10)]
    np.testing.assert_array_equal(np.concatenate(floats), images.astype(np.float32))  # no guessing by dtype
    # normalized=True: the contract of models saved before the model normalised (uint8 normalised here).
    legacy = np.concatenate([b.numpy() for b in eval_dataset(images, batch_size=10, normalized=True)])
    np.testing.assert_allclose(legacy, (images.astype(np.float64) - MEAN) / STD, atol=1e-5)
    np.testing.assert_allclose(pipeline.denormalize(legacy), images / 255.0, atol=1e-5)



def test_a_batch_never_holds_an_image_twice():
    """43 labeled / 67 unlabeled images at batch 10: passes do not divide evenly, batches never span two."""
    split = split_of_constant_images(num_labeled=43, num_unlabeled=67)
    split.y_labeled, split.num_classes = np.arange(43), 43  # labeled image i: its label, to identify it
    split.x_unlabeled = np.broadcast_to(np.arange(1, 68, dtype=np.uint8)[:, None, None, None], (67, 32, 32, 3))
    ds, steps = train_dataset(split, batch_size=10, seed=5, augmented=False)
    assert steps == 4
    unlabeled_passes = []
    for x, y in ds.take(40):
        assert len(set(y.numpy().tolist())) == 10
        ids = pixel_values(x["unlabeled"].numpy())
        assert len(set(ids.tolist())) == 10
        unlabeled_passes.append(set(ids.tolist()))
    for first in range(0, 36, 6):  # 6 batches per unlabeled pass: 60 distinct images, 7 left out
        assert len(set().union(*unlabeled_passes[first:first + 6])) == 60


def test_start_step_resumes_the_same_batches():
    split = split_of_constant_images(num_labeled=43, num_unlabeled=67)
    ds, _ = train_dataset(split, batch_size=10, seed=3)
    later, _ = train_dataset(split, batch_size=10, seed=3, start_step=13)
    whole = [(x["labeled"].numpy(), x["unlabeled"].numpy(), y.numpy()) for x, y in ds.take(20)]
    resumed = [(x["labeled"].numpy(), x["unlabeled"].numpy(), y.numpy()) for x, y in later.take(7)]
    for a, b in zip(whole[13:], resumed):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
