"""NUS-WIDE from the HashNet list files the original used: `relative/path.jpg l1 ... l21` per line.

```python
split = nuswide.load_split("lists/", "NUS-WIDE/images", image_size=32)
```

A `list:` collection (`gpq_keras.data.lists`) of 21 labels: LIST_DIR holds `database.txt`
(retrieval database, also the unlabeled training set), `test.txt` (queries) and `train.txt`
(labeled training set); labels are multi-hot (N, 21) uint8, and an item is relevant to a query
when they share at least one label (`gpq_keras.data.labels.relevance`). The parts are
`gpq_keras.data.image_files.ImageFiles`, resized (bilinear with antialias) when a batch is drawn,
so memory does not grow with NUS-WIDE's ~196,000 images; `.read()` decodes a part into a uint8
array (image_size**2 * 3 bytes per image).
"""

import os
import stat

from gpq_keras.data import lists
from gpq_keras.data.images import DEFAULT_MAX_PIXELS
from gpq_keras.data.lists import LIST_FILES, ListFormatError  # noqa: F401 - the old names
from gpq_keras.files import UnreadableFile, display_path, file_kind

NUM_CLASSES = 21


def read_list(path, num_classes=NUM_CLASSES):
    """A list file -> (paths list[str], multi-hot labels uint8 (N, num_classes)); blank lines are
    skipped. `gpq_keras.data.lists.read_list` with `width=num_classes` (and its errors)."""
    entries = lists.read_list(path, width=num_classes)
    return entries.paths, entries.labels


def resolve(paths, image_root, skip_unreadable=False):
    """Join list paths onto `image_root` -> the full paths.

    Only regular files (or links to them) are accepted: FileNotFoundError names the first missing
    image (with how many are missing), `gpq_keras.files.UnreadableFile` the first that is a FIFO,
    a socket, a device or a directory. With `skip_unreadable` nothing is refused here. (`load_split`
    checks images with `gpq_keras.data.lists.load_split`, which names the list file and line.)
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
    """NUS-WIDE as a `Split` of `ImageFiles`: queries from test.txt, labeled from train.txt,
    database = unlabeled from database.txt; `gpq_keras.data.lists.load_split` with
    `width=num_classes` and `name="nuswide"` (its checks and errors: a bad line or image names
    the list file and the line; with `skip_unreadable` a missing or unreadable image is left out
    with its labels and listed in the split's `skipped`).
    """
    list_dir = os.fspath(list_dir)
    if not os.path.isdir(list_dir):
        raise FileNotFoundError(f"NUS-WIDE list folder not found: {display_path(list_dir)}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"NUS-WIDE image folder not found: {display_path(image_root)}")
    return lists.load_split(
        list_dir,
        image_root,
        image_size=image_size,
        width=num_classes,
        max_pixels=max_pixels,
        skip_unreadable=skip_unreadable,
        name="nuswide",
    )
