"""NUS-WIDE from the HashNet list files the original used: `relative/path.jpg l1 ... l21` per line.

```python
split = nuswide.load_split("lists/", "NUS-WIDE/images", image_size=32)
```

LIST_DIR holds `database.txt` (retrieval database, also the unlabeled training set), `test.txt`
(queries) and `train.txt` (labeled training set); labels are multi-hot (N, 21) uint8, and an item is
relevant to a query when they share at least one label (`gpq_keras.data.labels.relevance`). Images
are decoded and resized (bilinear with antialias) by `gpq_keras.data.images.read_images` into
uint8 arrays, which take image_size**2 * 3 bytes per image: 3 KiB at 32x32, about 600 MB for
NUS-WIDE's ~196,000 images. For larger images use `gpq_keras.data.images.image_dataset(paths, size,
antialias=True)`, which decodes lazily. TensorFlow is imported only to decode.
"""

import io
import os
import stat

import numpy as np

from gpq_keras.data.images import DEFAULT_MAX_PIXELS, read_images
from gpq_keras.data.split import Split
from gpq_keras.files import FileFormatError, UnreadableFile, display_path, file_kind, open_regular

NUM_CLASSES = 21
LIST_FILES = {"query": "test.txt", "db": "database.txt", "labeled": "train.txt"}


class ListFormatError(FileFormatError):
    """A malformed line in a list file; the message names the file and the line number."""


def read_list(path, num_classes=NUM_CLASSES):
    """A list file -> (paths list[str], multi-hot labels uint8 (N, num_classes)). Blank lines are
    skipped.

    Raises FileNotFoundError for a missing file and `ListFormatError` naming the file and line for
    one that is not UTF-8 text or has a line other than `relative/path.jpg` and num_classes 0/1
    labels.
    """
    path = os.fspath(path)
    paths, labels = [], []
    # surrogateescape: a byte that is not UTF-8 reaches its line, which is then named in the error
    raw = open_regular(path, "NUS-WIDE list file")  # a FIFO or a device is refused, not read
    with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, start=1):
            if "\0" in line:
                raise ListFormatError(f"{path}:{number}: a NUL byte; not a text list file")
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = (
                    ord(line[exc.start]) - 0xDC00
                )  # surrogateescape keeps the byte in U+DC80..U+DCFF
                raise ListFormatError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1})"
                ) from None
            fields = line.split()
            if not fields:
                continue
            values = fields[1:]
            if len(values) != num_classes:
                raise ListFormatError(
                    f"{path}:{number}: expected a path and {num_classes} 0/1 labels, "
                    f"found {len(values)} labels"
                )
            if any(v not in ("0", "1") for v in values):
                bad = next(v for v in values if v not in ("0", "1"))
                raise ListFormatError(f"{path}:{number}: labels must be 0 or 1, found {bad!r}")
            paths.append(fields[0])
            labels.append([v == "1" for v in values])
    if not paths:
        raise ListFormatError(f"{path}: no entries")
    return paths, np.asarray(labels, dtype=np.uint8).reshape(len(paths), num_classes)


def resolve(paths, image_root, skip_unreadable=False):
    """Join list paths onto `image_root` -> the full paths.

    Only regular files (or links to them) are accepted: FileNotFoundError names the first missing
    image (with how many are missing), `gpq_keras.files.UnreadableFile` the first that is a FIFO,
    a socket, a device or a directory. With `skip_unreadable` nothing is refused here: the reader
    (`read_images`) leaves such files out and lists them.
    """
    full = [os.path.join(os.fspath(image_root), p) for p in paths]
    if skip_unreadable:
        return full
    missing = []
    for path in full:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            missing.append(path)
            continue
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{display_path(path)}: {file_kind(mode)}, not a regular file")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(full)} NUS-WIDE images not found, first: "
            f"{display_path(missing[0])}"
        )
    return full


def load_split(
    list_dir,
    image_root,
    image_size=32,
    num_classes=NUM_CLASSES,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
):
    """NUS-WIDE as a `Split`: queries from test.txt, labeled from train.txt, database =
    unlabeled.

    Images are read by `gpq_keras.data.images.read_images` (regular files only, none over
    `max_pixels`); with `skip_unreadable` a file that is missing or cannot be read is left out
    (with its labels) and listed as (path, reason) in the split's `skipped`, else it is refused.
    """
    list_dir = os.fspath(list_dir)
    if not os.path.isdir(list_dir):
        raise FileNotFoundError(f"NUS-WIDE list folder not found: {display_path(list_dir)}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"NUS-WIDE image folder not found: {display_path(image_root)}")
    lists = {
        part: read_list(os.path.join(list_dir, filename), num_classes)
        for part, filename in LIST_FILES.items()
    }  # every list checked before the slow decoding
    files = {
        part: resolve(paths, image_root, skip_unreadable) for part, (paths, _) in lists.items()
    }
    parts, skipped = {}, []
    for part, (_, labels) in lists.items():
        decoded = read_images(
            files[part],
            image_size,
            antialias=True,
            max_pixels=max_pixels,
            skip_unreadable=skip_unreadable,
        )
        if not len(decoded.images):
            raise ValueError(
                f"{display_path(os.path.join(list_dir, LIST_FILES[part]))}: none of its "
                f"{len(files[part])} images could be read"
            )
        parts[f"x_{part}"] = decoded.images
        parts[f"y_{part}"] = labels[decoded.kept]
        skipped += decoded.skipped
    return Split(**parts, num_classes=num_classes, name="nuswide", skipped=skipped)
