"""The user's own data: an `.npz` of ready splits, or a folder of class sub-folders.

```python
# x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled)
split = user.load_npz("mydata.npz")
split = user.load_folder("photos/")  # photos/cat/*.jpg, photos/dog/*.png ... split like the paper
```
"""

import os

import numpy as np

from gpq_keras.data.images import decode_images
from gpq_keras.data.split import Split, check_images, check_labels, protocol_split
from gpq_keras.files import FileFormatError, atomic_path, read_npz

REQUIRED_KEYS = ("x_query", "y_query", "x_db", "y_db")
OPTIONAL_KEYS = ("x_labeled", "y_labeled", "x_unlabeled")


def _refuse(check, *args):
    """Run a ValueError check of split.py and give its message as a FileFormatError."""
    try:
        return check(*args)
    except ValueError as exc:
        raise FileFormatError(str(exc)) from None


def load_npz(path, name=None):
    """A `Split` from an `.npz` with `x_query, y_query, x_db, y_db` and optionally training arrays.

    Images uint8 (N, H, W, 3); labels int class ids in [0, 65536) (N,) or multi-hot 0/1
    (N, classes), the same kind everywhere; no array empty. Without `x_unlabeled` the database is
    the unlabeled set, as in the paper. Other members are ignored.

    Every array's .npy header is read first: pickled objects are refused, and so is an array larger
    than its member of the zip or than the memory available, before anything is allocated. Raises
    FileNotFoundError for a missing file and FileFormatError (a ValueError), one line naming the
    file and the array at fault, for anything else.
    """
    path = os.fspath(path)
    arrays = read_npz(path, "npz file", keys=REQUIRED_KEYS + OPTIONAL_KEYS, required=REQUIRED_KEYS)
    if ("x_labeled" in arrays) != ("y_labeled" in arrays):
        raise FileFormatError(f"{path}: x_labeled and y_labeled go together")
    for key, value in arrays.items():
        if key.startswith("x_"):
            _refuse(check_images, value, f"{path}: '{key}'")
        else:
            _refuse(check_labels, value, f"{path}: '{key}'")
        if not len(value):
            raise FileFormatError(
                f"{path}: '{key}' is empty {value.shape}; every array needs at least one "
                f"{'image' if key.startswith('x_') else 'label'}"
            )
    y_keys = [k for k in ("y_query", "y_db", "y_labeled") if k in arrays]
    if (
        len({arrays[k].ndim for k in y_keys}) != 1
        or len({arrays[k].shape[1:] for k in y_keys}) != 1
    ):
        raise FileFormatError(
            f"{path}: labels must be all int (N,) or all multi-hot (N, classes); got "
            + ", ".join(f"{k} {arrays[k].shape}" for k in y_keys)
        )
    for part in ("query", "db", "labeled"):
        if f"x_{part}" in arrays and len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            raise FileFormatError(
                f"{path}: 'x_{part}' holds {len(arrays[f'x_{part}'])} images but 'y_{part}' "
                f"{len(arrays[f'y_{part}'])} labels"
            )
    if len({v.shape[1:] for k, v in arrays.items() if k.startswith("x_")}) != 1:
        raise FileFormatError(
            f"{path}: all images must have one size; got "
            + ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k.startswith("x_"))
        )
    name = name or os.path.splitext(os.path.basename(path))[0]
    try:
        return Split(**arrays, name=name)
    except ValueError as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def save_npz(path, split):
    """Write a `Split` as the `.npz` `load_npz` reads (compressed; written atomically)."""
    path = os.fspath(path)
    arrays = {
        k: getattr(split, k) for k in REQUIRED_KEYS + OPTIONAL_KEYS if getattr(split, k) is not None
    }
    if arrays.get("x_unlabeled") is split.x_db:
        del arrays["x_unlabeled"]  # the default; don't store the database twice
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".png",
)  # keras' image_dataset_from_directory's


def list_folder(directory):
    """Image files of a folder of class sub-folders, as `keras.utils.image_dataset_from_directory`
    lists them -> (paths, int64 labels, class names).

    Classes are the sorted sub-folders (not hidden); in each, its files of any depth with an image
    extension (case-insensitive), folders in sorted order, files sorted within a folder. Links to
    folders are not followed.
    """
    directory = os.fspath(directory)
    class_names = [
        d
        for d in sorted(os.listdir(directory))
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    ]
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        for root, _, files in sorted(
            os.walk(os.path.join(directory, class_name)), key=lambda x: x[0]
        ):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file))
                    labels.append(label)
    return paths, np.asarray(labels, np.int64), tuple(class_names)


def list_images(spec):
    """Image files to index: a folder (any depth) or a glob pattern -> (paths, int64 labels or None,
    class names or None), in a stable order.

    A folder whose images all lie in class sub-folders gives their classes as `list_folder` does
    (the sub-folder names); otherwise, and for a glob, the images have no labels. Raises
    FileNotFoundError when nothing matches and ValueError when no image file is found.
    """
    import glob

    spec = os.fspath(spec)
    if os.path.isdir(spec):
        paths, labels, class_names = list_folder(spec)
        everything = sorted(
            os.path.join(root, f)
            for root, _, files in os.walk(spec)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not paths or len(paths) != len(everything):  # loose images too: no classes
            paths, labels, class_names = everything, None, None
    else:
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise FileNotFoundError(f"no file or folder matches {spec}")
        paths = [p for p in matches if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
        labels = class_names = None
    if not paths:
        raise ValueError(f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, class_names


def load_folder(directory, image_size=32, query_every=10, labeled_per_class=None, batch_size=256):
    """A folder of class sub-folders -> `protocol_split` of all its images, resized to image_size.

    Files and class ids as `keras.utils.image_dataset_from_directory` gives them (`list_folder`):
    class ids follow the sorted sub-folder names. Every `query_every`-th image of the label-sorted
    set is a query; of the rest, `labeled_per_class` per class are labeled (default: a tenth of the
    smallest class, at least 1, close to the paper's 500 of 5,900) and the others the unlabeled
    set = database.

    Raises FileNotFoundError for a missing folder, FileFormatError naming the image for a file that
    does not decode, ValueError (one line) for a folder without images or too small for the
    protocol.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder not found: {directory}")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ValueError(f"image_size must be an int >= 1; received image_size={image_size!r}")
    paths, labels, class_names = list_folder(directory)
    if not paths:
        raise ValueError(
            f"{directory}: no images in class sub-folders (image files: "
            f"{', '.join(IMAGE_EXTENSIONS)}; found classes {list(class_names)})"
        )
    images = decode_images(paths, image_size, batch_size)
    if labeled_per_class is None and isinstance(query_every, int) and query_every >= 1:
        counts = np.bincount(labels, minlength=len(class_names))
        rest = counts[counts > 0] * (1 - 1 / query_every)
        labeled_per_class = max(1, int(rest.min() // 10))
    split = protocol_split(
        images, labels, query_every=query_every, labeled_per_class=labeled_per_class, name=directory
    )
    split.name = os.path.basename(os.path.normpath(directory))
    split.num_classes = len(class_names)
    split.class_names = class_names
    return split
