"""The one image decoder (`gpq_keras.data.images`): pixels as tf.image gives them, the antialias
flag, int or (height, width) sizes, and errors that name the file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from gpq_keras.data import images
from gpq_keras.files import FileFormatError


def write_images(folder, count=5, shape=(37, 29)):
    """`count` PNGs of noise (high frequencies: antialiasing changes their downscaled pixels)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i in range(count):
        array = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        path = os.path.join(folder, f"{i}.png")
        tf.io.write_file(path, tf.io.encode_png(array))
        paths.append(path)
        arrays.append(array)
    return paths, np.stack(arrays)


def reference(arrays, size, antialias):
    """tf.image's bilinear resize, rounded and clipped to uint8."""
    resized = tf.image.resize(arrays, size, method="bilinear", antialias=antialias).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("antialias", [False, True])
def test_decode_images_gives_tf_image_pixels(tmp_path, antialias):
    paths, arrays = write_images(tmp_path)
    out = images.decode_images(paths, (11, 7), batch_size=2, antialias=antialias)
    assert out.dtype == np.uint8 and out.shape == (5, 11, 7, 3)
    np.testing.assert_array_equal(out, reference(arrays, (11, 7), antialias))
    lazy = np.concatenate(
        list(images.image_dataset(paths, (11, 7), 2, antialias).as_numpy_iterator())
    )
    np.testing.assert_array_equal(lazy, out)


def test_the_antialias_flag_and_square_sizes(tmp_path):
    paths, arrays = write_images(tmp_path)
    plain = images.decode_images(paths, 8)
    assert plain.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(plain, images.decode_images(paths, (8, 8), antialias=False))
    smooth = images.decode_images(paths, 8, antialias=True)
    assert (smooth != plain).mean() > 0.5  # downscaling noise: antialiasing changes most pixels
    np.testing.assert_array_equal(smooth, reference(arrays, (8, 8), True))
    # Same size: nothing to resize, the pixels themselves either way.
    np.testing.assert_array_equal(images.decode_images(paths, (37, 29), antialias=True), arrays)


def test_a_bad_file_is_named(tmp_path):
    paths, _ = write_images(tmp_path, count=6)
    missing = str(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match=f"^image not found: {missing}$"):
        images.decode_images([*paths, missing], 8, batch_size=4)
    with open(paths[4], "wb") as f:
        f.write(b"not an image")
    for antialias in (False, True):
        with pytest.raises(FileFormatError) as info:
            images.decode_images(paths, 8, batch_size=4, antialias=antialias)
        assert str(info.value).startswith(f"{paths[4]}: not a decodable image (")
