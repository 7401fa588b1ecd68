"""Image files -> uint8 arrays: one tf.data decoder for folders, NUS-WIDE lists and query files.

```python
images = decode_images(paths, (32, 32))  # uint8 (N, 32, 32, 3), in order
batches = image_dataset(paths, 224)  # lazily decoded uint8 batches (B, 224, 224, 3)
```

Any JPEG, PNG, GIF (first frame) or BMP is decoded to RGB and resized (bilinear, as keras'
`image_dataset_from_directory` does; `antialias=True` as NUS-WIDE is read), then rounded and clipped
to uint8. Files decode in tf.data (AUTOTUNE, no Python loop per image); only when a batch fails is
each of its files decoded alone, to name the culprit. TensorFlow is imported only inside these
functions.
"""

import numpy as np

from gpq_keras.files import FileFormatError


def image_hw(image_size):
    """(height, width) of an `image_size`: an int (square) or (height, width)."""
    if np.ndim(image_size) == 0:
        return (int(image_size), int(image_size))
    height, width = image_size
    return (int(height), int(width))


def decode_image(path, image_size, antialias=False):
    """tf op: file path -> uint8 (height, width, 3), decoded and resized (bilinear)."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, image_hw(image_size), method="bilinear", antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def image_dataset(paths, image_size, batch_size=256, antialias=False):
    """Lazily decoded uint8 batches (B, height, width, 3) of the files, in order (tf.data)."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .map(lambda p: decode_image(p, image_size, antialias), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def check_decodable(path, image_size, antialias=False):
    """Decode one file as `decode_image` does; raise FileNotFoundError or FileFormatError naming
    it."""
    import tensorflow as tf

    try:
        decode_image(path, image_size, antialias)
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except tf.errors.OpError as exc:
        message = " ".join(exc.message.split())
        raise FileFormatError(f"{path}: not a decodable image ({message})") from None


def decode_images(paths, image_size, batch_size=256, antialias=False):
    """All files decoded into one uint8 array (N, height, width, 3), in order; `image_size` is an
    int (square) or (height, width).

    A missing file raises FileNotFoundError ("image not found: PATH"), one that does not decode
    FileFormatError ("PATH: not a decodable image (...)", a ValueError).
    """
    import tensorflow as tf

    paths = list(paths)
    out = np.empty((len(paths), *image_hw(image_size), 3), np.uint8)
    batches = iter(image_dataset(paths, image_size, batch_size, antialias))
    for start in range(0, len(paths), batch_size):
        try:
            batch = next(batches)
        except tf.errors.OpError as exc:
            for path in paths[start : start + batch_size]:  # the culprit, only on this error path
                check_decodable(path, image_size, antialias)
            message = " ".join(exc.message.split())
            raise FileFormatError(
                f"decoding images failed near {paths[start]}: {message}"
            ) from None
        out[start : start + len(batch)] = batch.numpy()
    return out
