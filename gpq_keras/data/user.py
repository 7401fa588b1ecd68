"""The user's own data: an `.npz` of ready splits, or a folder of class sub-folders.

```python
split = user.load_npz("mydata.npz")  # x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled)
split = user.load_folder("photos/")  # photos/cat/*.jpg, photos/dog/*.png ... split like the paper
```
"""

import os

import numpy as np

from gpq_keras.data.split import Split, check_images, protocol_split
from gpq_keras.files import atomic_path

REQUIRED_KEYS = ("x_query", "y_query", "x_db", "y_db")
OPTIONAL_KEYS = ("x_labeled", "y_labeled", "x_unlabeled")


def _check_labels(path, key, y):
    if y.ndim not in (1, 2) or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"{path}: '{key}' must be int class ids (N,) or multi-hot (N, classes); got "
                         f"{y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError(f"{path}: '{key}' has negative labels")


def load_npz(path, name=None):
    """A `Split` from an `.npz` with `x_query, y_query, x_db, y_db` and optionally training arrays.

    Images uint8 (N, H, W, 3); labels int (N,) or multi-hot (N, classes), the same kind everywhere.
    Without `x_unlabeled` the database is the unlabeled set, as in the paper. Pickled objects are
    refused (`allow_pickle=False`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        raise ValueError(f"{path}: not a plain-array .npz ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (has {sorted(arrays)}; needs "
                         f"{list(REQUIRED_KEYS)}, optionally {list(OPTIONAL_KEYS)})")
    if ("x_labeled" in arrays) != ("y_labeled" in arrays):
        raise ValueError(f"{path}: x_labeled and y_labeled go together")
    for key, value in arrays.items():
        if key.startswith("x_"):
            check_images(value, f"{path}: '{key}'")
        elif key.startswith("y_"):
            _check_labels(path, key, value)
    y_keys = [k for k in ("y_query", "y_db", "y_labeled") if k in arrays]
    if len({arrays[k].ndim for k in y_keys}) != 1 or len({arrays[k].shape[1:] for k in y_keys}) != 1:
        raise ValueError(f"{path}: labels must be all int (N,) or all multi-hot (N, classes); got "
                         + ", ".join(f"{k} {arrays[k].shape}" for k in y_keys))
    if len({arrays[k].shape[1:] for k in arrays if k.startswith("x_")}) != 1:
        raise ValueError(f"{path}: all images must have one size; got "
                         + ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k.startswith("x_")))
    known = {k: arrays[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in arrays}
    name = name or os.path.splitext(os.path.basename(path))[0]
    return Split(**known, name=name)


def save_npz(path, split):
    """Write a `Split` as the `.npz` `load_npz` reads (compressed; written atomically)."""
    path = os.fspath(path)
    arrays = {k: getattr(split, k) for k in REQUIRED_KEYS + OPTIONAL_KEYS if getattr(split, k) is not None}
    if arrays.get("x_unlabeled") is split.x_db:
        del arrays["x_unlabeled"]  # the default; don't store the database twice
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_folder(directory, image_size=32, query_every=10, labeled_per_class=None, batch_size=256):
    """A folder of class sub-folders -> `protocol_split` of all its images, resized to image_size.

    Class ids follow the sorted sub-folder names (`keras.utils.image_dataset_from_directory`). Every
    `query_every`-th image of the label-sorted set is a query; of the rest, `labeled_per_class` per class
    are labeled (default: a tenth of the smallest class, at least 1, close to the paper's 500 of 5,900)
    and the others the unlabeled set = database.
    """
    import keras

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder not found: {directory}")
    ds = keras.utils.image_dataset_from_directory(
        directory, labels="inferred", label_mode="int", color_mode="rgb", batch_size=batch_size,
        image_size=(image_size, image_size), shuffle=False, interpolation="bilinear", verbose=False)
    class_names = tuple(ds.class_names)
    images, labels = [], []
    for x, y in ds:
        images.append(np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8))
        labels.append(y.numpy().astype(np.int64))
    images, labels = np.concatenate(images), np.concatenate(labels)
    if labeled_per_class is None:
        rest = np.bincount(labels, minlength=len(class_names)) * (1 - 1 / query_every)
        labeled_per_class = max(1, int(rest.min() // 10))
    split = protocol_split(images, labels, query_every=query_every, labeled_per_class=labeled_per_class,
                           name=os.path.basename(os.path.normpath(directory)))
    if not len(split.x_db):
        raise ValueError(f"{directory}: too few images for a database ({len(images)} images, "
                         f"labeled_per_class={labeled_per_class})")
    split.num_classes = len(class_names)
    split.class_names = class_names
    return split
