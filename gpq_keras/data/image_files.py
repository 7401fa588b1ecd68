"""Image files read on demand: the streamed counterpart of uint8 images (N, H, W, 3).

```python
files = ImageFiles(paths, image_size=128)  # nothing is read yet
len(files), files.shape  # N, (N, 128, 128, 3)
batch = files.read([0, 5, 7])  # uint8 (3, 128, 128, 3), decoded and resized now
subset = files[10:20]  # ImageFiles of those 10 paths, still unread
```

A `Split` part of a file-based source (`folder:`, `list:`, `nuswide:`) is an `ImageFiles`: the
input pipelines (`gpq_keras.data.tf_pipeline`, `numpy_pipeline`) read each batch when it is drawn,
so memory is bounded by the batch and the prefetch, not by the collection. Every read goes through
`gpq_keras.data.images.read_images` (regular files only, the header checked against `max_pixels`
before decoding, bilinear resize), the one reader of image files.

A bad file met while a pipeline streams ends it with an error naming the file; tf.data wraps that
error into its own, and `reraise_file_errors` gives the original back.
"""

import contextlib
import os

import numpy as np

from gpq_keras.data.images import DEFAULT_MAX_PIXELS, check_max_pixels, image_hw, read_images

__all__ = ["ImageFiles", "reraise_file_errors", "take"]

# the last error of a read in any thread (tf.data reads in its own), and how many
# `reraise_file_errors` are open: only the outermost clears it (`fit` around `encode`)
_LAST = {"error": None, "depth": 0}


class ImageFiles:
    """N image files, decoded and resized to `image_size` (an int: square, or (height, width))
    when read.

    Array-like where a `Split` and the pipelines need it: `len`, `shape` (N, H, W, 3), `dtype`
    uint8, `ndim` 4; indexing with a slice, an int array or a bool mask gives the `ImageFiles` of
    those paths (nothing read), an int gives that one image decoded (H, W, 3). `read(indices)`
    decodes a batch. `np.asarray(files)` raises: turning a collection into one array is a choice
    (`read()`), never an accident.

    Attributes: `paths` (object array of str, names as the operating system gives them),
    `image_size` (height, width), `antialias` (as NUS-WIDE is resized), `max_pixels`.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, image_size=32, antialias=False, max_pixels=DEFAULT_MAX_PIXELS):
        if isinstance(paths, ImageFiles):
            paths = paths.paths
        self.paths = np.array([os.fsdecode(p) for p in paths], dtype=object)
        self.image_size = image_hw(image_size)
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive; received {image_size!r}")
        self.antialias = bool(antialias)
        self.max_pixels = check_max_pixels(max_pixels)

    # --- array-like --------------------------------------------------------------------------
    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self.paths), *self.image_size, 3)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.read([int(key)])[0]
        return self._like(self.paths[key])

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"{self!r} is read with .read(indices) (a batch) or .read() (every file, decoded "
            "into memory); np.asarray would decode the whole collection"
        )

    def __repr__(self):
        return (
            f"ImageFiles({len(self)} files at {self.image_size[0]}x{self.image_size[1]}"
            + (", antialias" if self.antialias else "")
            + ")"
        )

    def _like(self, paths):
        out = ImageFiles.__new__(ImageFiles)
        out.paths = np.asarray(paths, dtype=object).reshape(-1)
        out.image_size, out.antialias, out.max_pixels = (
            self.image_size,
            self.antialias,
            self.max_pixels,
        )
        return out

    def with_size(self, image_size):
        """The same files, read at another `image_size`."""
        out = self._like(self.paths)
        out.image_size = image_hw(image_size)
        return out

    def concatenate(self, other):
        """These files, then those of `other` (read at this size)."""
        return self._like(np.concatenate([self.paths, ImageFiles(other).paths]))

    # --- reading -----------------------------------------------------------------------------
    def read(self, indices=None, batch_size=256):
        """Decode the files at `indices` (default all) -> uint8 (n, H, W, 3), in that order.

        Raises FileNotFoundError or `gpq_keras.files.UnreadableFile` naming the first file that
        is missing or cannot be read (not a regular file, over `max_pixels`, not decodable); the
        error is also kept for `reraise_file_errors`."""
        paths = self.paths if indices is None else self.paths[np.asarray(indices, np.intp)]
        try:
            return read_images(
                list(paths),
                self.image_size,
                batch_size=batch_size,
                antialias=self.antialias,
                max_pixels=self.max_pixels,
            ).images
        except (OSError, ValueError) as exc:
            _LAST["error"] = exc
            raise


def take(images, indices):
    """uint8 images (n, H, W, 3) at `indices` of an array or an `ImageFiles` (decoded now)."""
    if isinstance(images, ImageFiles):
        return images.read(indices)
    return np.asarray(images)[np.asarray(indices, np.intp)]


@contextlib.contextmanager
def reraise_file_errors():
    """Run a pipeline's consumer (`fit`, `predict`); when it fails because an `ImageFiles` read
    failed (tf.data wraps the error into its own), raise that read's error instead: one line
    naming the file."""
    if not _LAST["depth"]:
        _LAST["error"] = None
    _LAST["depth"] += 1
    try:
        yield
    except Exception as exc:
        error = _LAST["error"]
        if error is None or exc is error:
            raise
        raise error from None
    finally:
        _LAST["depth"] -= 1
        if not _LAST["depth"]:
            _LAST["error"] = None
