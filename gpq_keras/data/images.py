"""Image files -> uint8 arrays: the one decoder for folders, NUS-WIDE lists and query files.

```python
images = decode_images(paths, (32, 32))  # uint8 (N, 32, 32, 3), in order; raises on a bad file
got = read_images(paths, 32, skip_unreadable=True)  # got.images, got.kept, got.skipped
batches = image_dataset(paths, 224)  # lazily decoded uint8 batches (B, 224, 224, 3)
```

Every file is read the same way (the rules are in the docs page "Files: what gpq reads and
writes"):

1. It is opened by `gpq_keras.files.open_regular`: only a regular file (or a link to one) is read;
   a FIFO, socket, device or directory is refused without blocking.
2. Its header is read by Pillow (the format's plugin, lazily: nothing is decoded), and an image of
   more than `max_pixels` pixels (default 89,478,485, Pillow's `MAX_IMAGE_PIXELS`) is refused,
   naming the file and its size; so is a file larger than any image of `max_pixels` pixels could
   be (`max_file_bytes`). No global Pillow setting is changed.
3. Its bytes, read in Python a batch at a time (the next batch read while the last one decodes),
   are decoded by TensorFlow (`tf.io.decode_image`), a batch in parallel in one traced function:
   any JPEG, PNG, GIF (first frame), BMP or WebP, to RGB, resized (bilinear, as keras'
   `image_dataset_from_directory` does; `antialias=True` as NUS-WIDE is read), then rounded and
   clipped to uint8. Only when a batch fails is each of its files decoded alone, to name it.

File names are used as the operating system gives them (a name that is not UTF-8 included: it is
never turned into a TensorFlow string) and shown through `gpq_keras.files.display_path`. Errors:
FileNotFoundError ("image not found: PATH"), `gpq_keras.files.UnreadableFile` (a FileFormatError,
a ValueError: "PATH: a FIFO (named pipe), not a regular file", "PATH: 15000 x 15000 pixels exceed
--max-pixels 89478485", "PATH: not a decodable image (...)"). TensorFlow and Pillow are imported
only inside these functions.
"""

import collections
import concurrent.futures
import functools
import io
import os
import re

import numpy as np

from gpq_keras.data.split import check_count
from gpq_keras.files import FileFormatError, UnreadableFile, display_path, open_regular

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: 1 GiB of 32-bit RGB(A) pixels / 3
# The largest file an image of N pixels can be: 8 bytes a pixel (16-bit RGBA PNG stored without
# compression, which is also more than a BMP's 4 or a GIF's LZW) plus room for metadata.
BYTES_PER_PIXEL = 8
METADATA_BYTES = 64 * 2**20
READ_CHUNK_BYTES = 64 * 2**20  # file bytes read ahead for one batch at most

DecodedImages = collections.namedtuple("DecodedImages", ["images", "kept", "skipped"])
DecodedImages.__doc__ = """What `read_images` decoded: `images` uint8 (n, height, width, 3), `kept`
the positions (int64 (n,)) in the paths given of those images, `skipped` a list of
(path, reason) for the files left out (only with `skip_unreadable`)."""

# The formats tf.io.decode_image reads, by the magic bytes it tells them by, and Pillow's plugin
# for each (module, class): the header is read by the same rule that picks the decoder.
_FORMATS = (
    (b"\xff\xd8\xff", "JpegImagePlugin", "JpegImageFile"),
    (b"\x89PNG\r\n\x1a\n", "PngImagePlugin", "PngImageFile"),
    (b"GIF8", "GifImagePlugin", "GifImageFile"),
    (b"BM", "BmpImagePlugin", "BmpImageFile"),
)


def image_hw(image_size):
    """(height, width) of an `image_size`: an int (square) or (height, width)."""
    if np.ndim(image_size) == 0:
        return (int(image_size), int(image_size))
    height, width = image_size
    return (int(height), int(width))


def check_max_pixels(max_pixels):
    """`max_pixels` as an int >= 1 (None: no limit); a ValueError naming it otherwise."""
    return None if max_pixels is None else check_count("max_pixels", max_pixels)


def max_file_bytes(max_pixels=DEFAULT_MAX_PIXELS):
    """The largest image file read for a `max_pixels` limit (None: no limit): 8 bytes a pixel
    plus 64 MiB of metadata; a larger regular file is refused without reading it."""
    if max_pixels is None:
        return None
    return BYTES_PER_PIXEL * int(max_pixels) + METADATA_BYTES


def _pillow_plugin(head):
    """Pillow's image class for the format `head` (the first bytes) starts like, or None."""
    import importlib

    for magic, module, name in _FORMATS:
        if head.startswith(magic):
            return getattr(importlib.import_module(f"PIL.{module}"), name)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        try:
            from PIL import WebPImagePlugin
        except ImportError:  # a Pillow built without WebP
            return None
        return getattr(WebPImagePlugin, "WebPImageFile", None)
    return None


def image_header(path, fh):
    """(width, height) from the header of an open image file, nothing decoded; the file is left
    at its start. Raises UnreadableFile "PATH: not a decodable image (...)" for a file Pillow
    cannot identify as a JPEG, PNG, GIF, BMP or WebP."""
    from PIL import Image

    shown = display_path(path)
    head = fh.read(16)
    fh.seek(0)
    plugin = _pillow_plugin(head)
    if plugin is None:
        raise UnreadableFile(
            f"{shown}: not a decodable image (not a JPEG, PNG, GIF, BMP or WebP file)"
        )
    try:
        # The plugin's class reads the header only (Image.open would add Pillow's own
        # decompression-bomb check, with its global limit, before we could name the size).
        with plugin(fh) as image:
            size = tuple(int(v) for v in image.size)
    except Image.DecompressionBombError as exc:  # a GIF frame larger than its screen
        raise UnreadableFile(f"{shown}: {exc}") from None
    except Exception as exc:  # a damaged header: SyntaxError, struct.error, OSError, ...
        message = " ".join(f"{exc}".split()) or type(exc).__name__
        raise UnreadableFile(f"{shown}: not a decodable image ({message})") from None
    finally:
        fh.seek(0)
    return size


class ImageTooLarge(UnreadableFile):
    """`check_image_bytes`' error for an image whose header declares more than `max_pixels`, or
    bytes larger than any image of that many pixels could be (`gpq serve` answers it with 413, a
    bad image with 400)."""


def _check_open(path, fh, max_pixels, limit, size=None, too_large=UnreadableFile):
    """Steps 1-2 of the module's rule on an open file (`size`: its bytes, default its size on
    disk) -> its size in bytes; `too_large`: the error of an image over the limits."""
    if size is None:
        size = os.fstat(fh.fileno()).st_size
    if limit is not None and size > limit:
        raise too_large(
            f"{display_path(path)}: {size} bytes, larger than any image of --max-pixels "
            f"{max_pixels} could be ({limit} bytes)"
        )
    width, height = image_header(path, fh)
    if max_pixels is not None and width * height > max_pixels:
        raise too_large(
            f"{display_path(path)}: {width} x {height} pixels exceed --max-pixels {max_pixels}"
        )
    return size


def check_image_bytes(name, data, max_pixels=DEFAULT_MAX_PIXELS):
    """Steps 1-2 of the module's rule on the bytes of an image file (an upload) named `name`:
    ImageTooLarge over the limits (an UnreadableFile as for a file), else UnreadableFile for
    bytes that are not an image; nothing decoded."""
    limit = max_file_bytes(max_pixels)
    _check_open(name, io.BytesIO(data), max_pixels, limit, len(data), too_large=ImageTooLarge)


def check_image_files(paths, max_pixels=DEFAULT_MAX_PIXELS, skip_unreadable=False):
    """Check image files as `read_image_file` does (a regular file, its size, its header against
    `max_pixels`), reading headers only, nothing decoded -> (kept: int64 positions of the good
    files, skipped: [(path, reason)]).

    What a streamed source (`gpq_keras.data.image_files.ImageFiles`) does at load: a file that is
    missing, not an image or too large is named before training starts; one whose pixels do not
    decode is named when a batch reads it (`gpq data check` decodes every file). Without
    `skip_unreadable` the first bad file raises."""
    max_pixels = check_max_pixels(max_pixels)
    limit = max_file_bytes(max_pixels)

    def check(path):
        with open_regular(path, "image") as fh:
            _check_open(path, fh, max_pixels, limit)

    kept, skipped = [], []
    for position, path in enumerate(paths):
        _, error = _checked(check, path)
        if error is None:
            kept.append(position)
        elif skip_unreadable:
            skipped.append((path, str(error)))
        else:
            raise error
    return np.asarray(kept, np.int64), skipped


def read_image_file(path, max_pixels=DEFAULT_MAX_PIXELS):
    """The bytes of one image file, checked before anything is decoded (`open_regular`, its size
    on disk, its header's pixel count against `max_pixels`, None for no limit); raises as the
    module says."""
    limit = max_file_bytes(max_pixels)
    with open_regular(path, "image") as fh:
        size = _check_open(path, fh, max_pixels, limit)
        data = fh.read(size + 1)  # not read(limit): that would allocate the limit each time
        if len(data) > size:  # it grew since: read on, bounded
            data += fh.read(limit + 1 - len(data)) if limit is not None else fh.read()
    if limit is not None and len(data) > limit:
        raise UnreadableFile(
            f"{display_path(path)}: larger than any image of --max-pixels {max_pixels} could be "
            f"({limit} bytes)"
        )
    return data


def decode_image_bytes(data, image_size, antialias=False):
    """tf op: the bytes of an image file (a string tensor) -> uint8 (height, width, 3), decoded and
    resized (bilinear)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_hw(image_size), method="bilinear", antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _checked(read, path):
    """(read(path), None) for a good file, or (None, the error naming it) for a bad one: the
    module's errors as they are, an I/O error as UnreadableFile "PATH: cannot be read (...)"."""
    try:
        return read(path), None
    except (FileNotFoundError, FileFormatError) as exc:
        return None, exc
    except OSError as exc:  # an I/O error while reading it
        return None, UnreadableFile(f"{display_path(path)}: cannot be read ({exc})")


def _read_checked(path, max_pixels):
    """(bytes, None) of a good file, or (None, the error naming it) of a bad one."""
    return _checked(lambda p: read_image_file(p, max_pixels), path)


@functools.cache
def _chunk_decoder(hw, antialias):
    """A tf.function, traced once per size: a vector of image file bytes -> uint8 (n, h, w, 3),
    the files decoded in parallel (`tf.map_fn`, as many at once as there are CPU cores)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(datas):
        return tf.map_fn(
            lambda data: decode_image_bytes(data, hw, antialias),
            datas,
            fn_output_signature=tf.TensorSpec([*hw, 3], tf.uint8),
            parallel_iterations=max(2, os.cpu_count() or 1),
        )

    return decode


def _read_chunks(paths, batch_size, max_pixels, errors, stop_at_error):
    """Chunks [(position, bytes)] of the files that read well (`batch_size` files or
    `READ_CHUNK_BYTES` at most), read in order; a file that does not read goes into `errors`
    {position: exception} instead (and ends the reading with `stop_at_error`)."""
    chunk, held = [], 0
    for position, path in enumerate(paths):
        data, error = _read_checked(path, max_pixels)
        if error is not None:
            errors[position] = error
            if stop_at_error:
                break
            continue
        chunk.append((position, data))
        held += len(data)
        if len(chunk) >= batch_size or held >= READ_CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _read_ahead(chunks):
    """The items of `chunks`, each read in a thread while the caller works on the one before
    (reading is Python, decoding TensorFlow, which releases the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(next, chunks, None)
        while True:
            chunk = future.result()
            if chunk is None:
                return
            future = pool.submit(next, chunks, None)
            yield chunk


def decode_one(path, data, hw, antialias=False):
    """One file's bytes decoded alone (eagerly: the same ops) -> uint8 (h, w, 3); UnreadableFile
    naming it when it does not decode."""
    import tensorflow as tf

    try:
        return decode_image_bytes(tf.constant(data, tf.string), hw, antialias).numpy()
    except tf.errors.OpError as exc:
        # "{{function_node __wrapped__DecodeImage_device_...}} Invalid PNG data [Op:DecodeImage]
        # name:" -> the reason
        message = re.sub(
            r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", " ".join(exc.message.split())
        )
        message = message or type(exc).__name__
        raise UnreadableFile(f"{display_path(path)}: not a decodable image ({message})") from None


def read_images(
    paths,
    image_size,
    batch_size=256,
    antialias=False,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
):
    """Image files -> `DecodedImages(images, kept, skipped)`: uint8 (n, height, width, 3) in the
    order given, `image_size` an int (square) or (height, width).

    Each file is read as the module says (regular files only, the header checked against
    `max_pixels` before anything is decoded, None for no limit). Without `skip_unreadable` the
    first bad file raises (FileNotFoundError, or `UnreadableFile` naming it and why) and nothing
    is returned; with it, bad files are left out and listed in `skipped` as (path, reason), and
    `kept` gives the positions of the decoded ones.

    The files are read in Python, `batch_size` at a time (a thread reads the next batch while the
    last one decodes), and each batch is decoded in parallel by one traced TensorFlow function.
    """
    import tensorflow as tf

    max_pixels = check_max_pixels(max_pixels)
    batch_size = check_count("batch_size", batch_size)
    paths = list(paths)
    hw = image_hw(image_size)
    out = np.empty((len(paths), *hw, 3), np.uint8)
    errors = {}
    decoded = np.zeros(len(paths), bool)
    chunks = _read_chunks(paths, batch_size, max_pixels, errors, not skip_unreadable)
    decode = _chunk_decoder(hw, bool(antialias))
    reader = _read_ahead(chunks)
    try:
        for chunk in reader:
            positions = np.array([position for position, _ in chunk], np.int64)
            try:
                datas = tf.constant([data for _, data in chunk], tf.string)
                out[positions] = decode(datas).numpy()
                decoded[positions] = True
                continue
            except tf.errors.OpError:
                pass
            failed = False
            for position, data in chunk:  # only on this error path: each file alone, to name it
                try:
                    out[position] = decode_one(paths[position], data, hw, antialias)
                    decoded[position] = True
                except UnreadableFile as exc:
                    errors[position] = exc
                    failed = not skip_unreadable
                    if failed:
                        break
            if failed:
                break
    finally:
        reader.close()  # the read-ahead thread ends with the batch it is reading
    if errors and not skip_unreadable:
        raise errors[min(errors)]
    kept = np.flatnonzero(decoded)
    skipped = [(paths[i], str(errors[i])) for i in sorted(errors)]
    return DecodedImages(out if len(kept) == len(paths) else out[kept], kept, skipped)


def decode_images(
    paths, image_size, batch_size=256, antialias=False, max_pixels=DEFAULT_MAX_PIXELS
):
    """All files decoded into one uint8 array (N, height, width, 3), in order; `image_size` is an
    int (square) or (height, width).

    Strict `read_images`: the first file that is missing raises FileNotFoundError
    ("image not found: PATH"), one that is not a regular file, is over `max_pixels` or does not
    decode `UnreadableFile` ("PATH: not a decodable image (...)", a FileFormatError).
    """
    return read_images(paths, image_size, batch_size, antialias, max_pixels).images


def image_dataset(
    paths, image_size, batch_size=256, antialias=False, max_pixels=DEFAULT_MAX_PIXELS
):
    """Lazily decoded uint8 batches (B, height, width, 3) of the files, in order (tf.data).

    The files are read as `read_images` reads them (a Python generator feeds their checked bytes
    to tf.data's parallel decoding); a bad file ends the iteration with a tf.errors.OpError whose
    message names it.
    """
    import tensorflow as tf

    paths = list(paths)
    max_pixels = check_max_pixels(max_pixels)
    batch_size = check_count("batch_size", batch_size)
    hw = image_hw(image_size)

    def chunks():
        errors = {}
        for chunk in _read_chunks(paths, batch_size, max_pixels, errors, True):
            yield np.array([data for _, data in chunk], object)
        if errors:
            raise errors[min(errors)]

    return (
        tf.data.Dataset.from_generator(chunks, output_signature=tf.TensorSpec([None], tf.string))
        .prefetch(2)
        .unbatch()
        .map(lambda d: decode_image_bytes(d, hw, antialias), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
