"""The paper's retrieval protocol: query / labeled / unlabeled (= database) splits."""

import dataclasses

import numpy as np


def check_images(images, where):
    """Raise ValueError unless `images` are uint8 RGB images (N, H, W, 3); return them as an array.

    `where` names the array in the message, e.g. "mydata.npz: 'x_db'" or "cifar10: x_query":
    `mydata.npz: 'x_db' must be uint8 images (N, H, W, 3); got float32 (10, 32, 32)`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{where} must be uint8 images (N, H, W, 3); got {images.dtype} {images.shape}")
    return images


@dataclasses.dataclass
class Split:
    """One data set split as the paper uses it. Images are uint8 (N, H, W, 3) (`check_images`).

    Labels are int class ids (N,) or multi-hot (N, classes). `x_unlabeled` defaults to the database,
    as in the paper (the 54,000 unlabeled CIFAR-10 images are the retrieval database). `class_names`,
    when the source has them, names the classes in label order.
    """

    x_query: np.ndarray
    y_query: np.ndarray
    x_db: np.ndarray
    y_db: np.ndarray
    x_labeled: np.ndarray = None
    y_labeled: np.ndarray = None
    x_unlabeled: np.ndarray = None
    num_classes: int = None
    name: str = "data"
    class_names: tuple = None

    def __post_init__(self):
        if self.x_unlabeled is None:
            self.x_unlabeled = self.x_db
        if self.num_classes is None:
            labels = [y for y in (self.y_query, self.y_db, self.y_labeled) if y is not None]
            self.num_classes = (labels[0].shape[1] if labels[0].ndim == 2
                              else int(max(int(y.max()) for y in labels)) + 1)
        for prefix in ("query", "db", "labeled"):
            x, y = getattr(self, f"x_{prefix}"), getattr(self, f"y_{prefix}")
            if x is None and y is None:
                continue
            if x is None or y is None or len(x) != len(y):
                raise ValueError(f"{self.name}: x_{prefix} and y_{prefix} must have the same length "
                                 f"(got {None if x is None else x.shape} and {None if y is None else y.shape})")
            check_images(x, f"{self.name}: x_{prefix}")
        if self.x_unlabeled is not self.x_db:
            check_images(self.x_unlabeled, f"{self.name}: x_unlabeled")

    @property
    def has_training_data(self):
        return self.x_labeled is not None and self.x_unlabeled is not None


def protocol_split(images, labels, query_every=60, labeled_per_class=500, name="data"):
    """Split labelled images as the paper does for CIFAR-10.

    Sort by label (stably), take every `query_every`-th image as a query, then in each class the first
    `labeled_per_class` of the rest are labeled training data and the others the unlabeled set, which is
    also the retrieval database. CIFAR-10's 60,000 give 1,000 / 5,000 / 54,000.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{name}: expected one int label per image; got labels {labels.shape} "
                         f"for images {np.shape(images)}")
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    is_query = np.zeros(len(labels), bool)
    is_query[::query_every] = True
    rest = np.flatnonzero(~is_query)
    rank_in_class = np.empty(len(rest), np.int64)
    for c in np.unique(labels[rest]):
        members = labels[rest] == c
        rank_in_class[members] = np.arange(members.sum())
    labeled, unlabeled = rest[rank_in_class < labeled_per_class], rest[rank_in_class >= labeled_per_class]
    return Split(x_query=images[is_query], y_query=labels[is_query],
                 x_db=images[unlabeled], y_db=labels[unlabeled],
                 x_labeled=images[labeled], y_labeled=labels[labeled],
                 num_classes=int(labels.max()) + 1, name=name)


def default_validation_per_class(split):
    """A tenth of the smallest labeled class (at least 1): the default of `hold_out_validation`."""
    y = np.asarray(split.y_labeled)
    counts = y.sum(0) if y.ndim == 2 else np.bincount(y, minlength=split.num_classes)
    counts = counts[counts > 0]
    return max(1, int(counts.min()) // 10) if len(counts) else 0


def hold_out_validation(split, per_class):
    """Hold labeled images out of training for validation -> (training split, x_val, y_val).

    The first `per_class` labeled images of each class (in order) are held out; with multi-hot labels an
    image counts for each of its classes and is held out while one of them still needs images. The test
    queries are never touched. `per_class=0` holds nothing out (x_val and y_val are None).
    """
    if not split.has_training_data:
        raise ValueError(f"{split.name}: no labeled training images to hold validation images out of")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise ValueError(f"per_class must be an int >= 0; received per_class={per_class!r}")
    if per_class == 0:
        return split, None, None
    y = np.asarray(split.y_labeled)
    hot = (y != 0) if y.ndim == 2 else np.eye(split.num_classes, dtype=bool)[y]
    taken = np.zeros(hot.shape[1], np.int64)
    held = np.zeros(len(y), bool)
    for i in range(len(y)):  # one pass in order; cheap next to training
        wanted = hot[i] & (taken < per_class)
        if wanted.any():
            held[i] = True
            taken += hot[i]
    if held.all():
        raise ValueError(f"{split.name}: holding out {per_class} labeled images per class leaves none for "
                         f"training ({len(y)} labeled images); use a smaller --val-per-class")
    train = dataclasses.replace(split, x_labeled=split.x_labeled[~held], y_labeled=y[~held])
    return train, split.x_labeled[held], y[held]
