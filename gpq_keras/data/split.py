"""The paper's retrieval protocol: query / labeled / unlabeled (= database) splits."""

import dataclasses
import os

import numpy as np

MAX_CLASSES = 65536  # class ids must be in [0, MAX_CLASSES): a bound before anything sized by them


def check_count(arg, value, where=None):
    """`value` as an int >= 1 (NumPy ints too, not bool); a ValueError "[where: ]arg must be an int
    >= 1; received arg=value" otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{arg} must be an int >= 1; received {arg}={value!r}")
    return int(value)


def check_images(images, where):
    """Raise ValueError unless `images` are uint8 RGB images (N, H, W, 3) or an `ImageFiles`;
    return them (an array, or the `ImageFiles`).

    `where` names the array in the message, e.g. "mydata.npz: 'x_db'" or "cifar10: x_query":
    `mydata.npz: 'x_db' must be uint8 images (N, H, W, 3); got float32 (10, 32, 32)`.
    """
    from gpq_keras.data.image_files import ImageFiles

    if not isinstance(images, ImageFiles):
        images = np.asarray(images)
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or 0 in images.shape[1:3]
    ):
        raise ValueError(
            f"{where} must be uint8 images (N, H, W, 3); got {images.dtype} {images.shape}"
        )
    return images


EMBEDDING_CHECK_VALUES = 2**24  # values checked for NaN/inf at a time (bounded memory)


def is_vectors(inputs):
    """Whether checked inputs (`check_inputs`) are embeddings: a 2-D array (N, D), not images."""
    return getattr(inputs, "ndim", None) == 2


def check_inputs(inputs, where):
    """The inputs a `Split` part may hold: uint8 RGB images (N, H, W, 3) or an `ImageFiles`
    (returned as they are) or embeddings, a 2-D float array (N, D) with D >= 1 (returned as
    finite float32, C-contiguous: the same array when it is that already).

    Raises ValueError, one line naming `where` (e.g. "mydata.npz: 'x_db'"):
    `mydata.npz: 'x_db' is 1-D (1000,); embeddings are 2-D float (N, D)`,
    `mydata.npz: 'x_db' holds NaN at row 17; embeddings must be finite`,
    `mydata.npz: 'x_db' must be uint8 images (N, H, W, 3) or float embeddings (N, D); got int64
    (10, 5)`, and `check_images`' line for arrays of 3 or more dimensions.
    """
    from gpq_keras.data.image_files import ImageFiles

    if isinstance(inputs, ImageFiles):
        return inputs
    array = np.asarray(inputs)
    if array.ndim == 2 and np.issubdtype(array.dtype, np.floating) and array.shape[1] >= 1:
        return _check_embeddings(array, where)
    if array.ndim == 1:
        raise ValueError(f"{where} is 1-D {array.shape}; embeddings are 2-D float (N, D)")
    if array.ndim in (0, 2):
        raise ValueError(
            f"{where} must be uint8 images (N, H, W, 3) or float embeddings (N, D); got "
            f"{array.dtype} {array.shape}"
        )
    return check_images(array, where)


def _check_embeddings(array, where):
    """Float (N, D) -> finite float32 C-contiguous (N, D); a one-line ValueError naming the first
    row with NaN or inf (or a value float32 cannot hold)."""
    with np.errstate(over="ignore"):  # a value beyond float32's range is named below
        vectors = np.ascontiguousarray(array, dtype=np.float32)
    rows = max(1, EMBEDDING_CHECK_VALUES // vectors.shape[1])
    for start in range(0, len(vectors), rows):
        finite = np.isfinite(vectors[start : start + rows])
        if finite.all():
            continue
        row = start + int(np.flatnonzero(~finite.all(1))[0])
        column = int(np.flatnonzero(~finite[row - start])[0])
        value = array[row, column]
        if np.isfinite(value):
            raise ValueError(
                f"{where} holds {float(value):g} at row {row}, beyond float32's range; "
                "embeddings must be finite float32"
            )
        what = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        raise ValueError(f"{where} holds {what} at row {row}; embeddings must be finite")
    return vectors


def describe_inputs(inputs):
    """ "embeddings (N, D)" or "images (N, H, W, 3)" of checked inputs, for messages."""
    return f"{'embeddings' if is_vectors(inputs) else 'images'} {tuple(inputs.shape)}"


def check_same_inputs(parts, where):
    """Raise ValueError (one line naming both parts) unless the checked inputs `parts` {name:
    inputs} (None skipped) are all of one kind, images or embeddings, of one size or width."""
    named = [(name, x) for name, x in parts.items() if x is not None]
    for name, x in named[1:]:
        first_name, first = named[0]
        if is_vectors(x) != is_vectors(first):
            why = "every part must be of one kind"
        elif tuple(x.shape[1:]) != tuple(first.shape[1:]):
            why = f"every part must have one {'width' if is_vectors(x) else 'size'}"
        else:
            continue
        raise ValueError(
            f"{where}: {name} are {describe_inputs(x)} but {first_name} are "
            f"{describe_inputs(first)}; {why}"
        )


def check_labels(labels, where):
    """Raise ValueError unless `labels` are int class ids (N,) in [0, MAX_CLASSES) or multi-hot 0/1
    (N, classes); return them as an array.

    `where` names the array:
    `mydata.npz: 'y_labeled' holds class id 1000000000; class ids must be in [0, 65536)`. Nothing is
    allocated from the values, so a huge id is refused, not tried.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2) or not (
        np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
    ):
        raise ValueError(
            f"{where} must be int class ids (N,) or multi-hot (N, classes); got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.ndim == 2 and not labels.shape[1]:
        raise ValueError(
            f"{where} are multi-hot labels of no class {labels.shape}; they need at least one"
        )
    if not labels.size or labels.dtype == bool:
        return labels
    low, high = labels.min(), labels.max()
    if labels.ndim == 1 and (low < 0 or high >= MAX_CLASSES):
        bad = low if low < 0 else high
        raise ValueError(
            f"{where} holds class id {int(bad)}; class ids must be in [0, {MAX_CLASSES})"
        )
    if labels.ndim == 2:
        if labels.shape[1] > MAX_CLASSES:
            raise ValueError(
                f"{where} has {labels.shape[1]} classes; at most {MAX_CLASSES} are supported"
            )
        if low < 0 or high > 1:
            bad = labels[(labels != 0) & (labels != 1)].flat[0]
            raise ValueError(f"{where} holds {int(bad)}; multi-hot labels must be 0 or 1")
    return labels


def _infer_num_classes(labels):
    """Classes of checked labels: the multi-hot width, or the largest class id + 1
    (< MAX_CLASSES)."""
    if labels[0].ndim == 2:
        return labels[0].shape[1]
    return max(int(y.max()) + 1 if y.size else 0 for y in labels)


_PARTS = {"query": "query set", "db": "retrieval database", "labeled": "labeled training set"}
# the parts of a split by their names in `gpq data check`, run.json, split.npz and `Split.index`
# -> (images, labels) attributes
PARTS = {
    "query": ("x_query", "y_query"),
    "labeled": ("x_labeled", "y_labeled"),
    "unlabeled": ("x_unlabeled", None),
    "database": ("x_db", "y_db"),
}
PROTOCOL_DEFAULT = "given"  # the source's own parts (a folder: every labeled image trains)


@dataclasses.dataclass
class Split:
    """One data set split as the paper uses it. Images are uint8 (N, H, W, 3) (`check_images`) or,
    for file-based sources, `gpq_keras.data.image_files.ImageFiles` read when a batch is drawn; or
    every part holds embeddings, float32 (N, D) (`check_inputs`: a float (N, D) part is converted,
    NaN and inf refused), which the pipelines give as they are (`takes_vectors`).

    Labels are int class ids (N,) or multi-hot (N, classes). `x_unlabeled` defaults to the database,
    as in the paper (the 54,000 unlabeled CIFAR-10 images are the retrieval database).
    `class_names`, when the source has them, names the classes in label order. `skipped` lists
    the (path, reason) of the image files a loader left out (`skip_unreadable`); empty otherwise.
    The queries may be None (a split for training only).

    Where the parts came from: `protocol` (`gpq_keras.data.protocols`) and its `seed`, `index`
    {part: int64 positions in the source's pool} for the parts of array sources (file parts carry
    their paths; `pooled`: every part's positions are in one pool, else each in its own array),
    and for `unseen` the `seen_classes`, `unseen_classes` and the database of every
    class, `x_db_all`, `y_db_all` (unseen@all).

    Raises ValueError (one line naming the array) for an empty set, inputs that are neither uint8
    RGB images nor finite float embeddings, parts of two kinds or sizes (widths), labels that are
    not int ids in [0, 65536) (`MAX_CLASSES`) or multi-hot 0/1 of one kind everywhere, and labels
    outside an explicit `num_classes`; `num_classes` is inferred without allocating from labels.
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
    skipped: list = dataclasses.field(default_factory=list)
    protocol: str = PROTOCOL_DEFAULT
    seed: int = None
    index: dict = dataclasses.field(default_factory=dict)
    seen_classes: tuple = None
    unseen_classes: tuple = None
    x_db_all: np.ndarray = None
    y_db_all: np.ndarray = None
    pooled: bool = False

    def __post_init__(self):
        unlabeled_is_db = self.x_unlabeled is None or self.x_unlabeled is self.x_db
        if self.x_unlabeled is None:
            self.x_unlabeled = self.x_db
        checked = {}  # id(given) -> (given, checked): a part given twice is converted once
        for prefix in ("query", "db", "labeled"):
            x, y = getattr(self, f"x_{prefix}"), getattr(self, f"y_{prefix}")
            if x is None and y is None:
                continue
            if x is None or y is None or len(x) != len(y):
                raise ValueError(
                    f"{self.name}: x_{prefix} and y_{prefix} must have the same length "
                    f"(got {None if x is None else np.shape(x)} and "
                    f"{None if y is None else np.shape(y)})"
                )
            if id(x) not in checked:
                checked[id(x)] = (x, check_inputs(x, f"{self.name}: x_{prefix}"))
            setattr(self, f"x_{prefix}", checked[id(x)][1])
            setattr(self, f"y_{prefix}", check_labels(y, f"{self.name}: y_{prefix}"))
            if not len(x):
                raise ValueError(
                    f"{self.name}: x_{prefix} holds no {_rows(checked[id(x)][1])}; the "
                    f"{_PARTS[prefix]} needs at least one"
                )
        if unlabeled_is_db:
            self.x_unlabeled = self.x_db
        else:
            x = self.x_unlabeled
            self.x_unlabeled = (
                checked[id(x)][1]
                if id(x) in checked
                else check_inputs(x, f"{self.name}: x_unlabeled")
            )
            if not len(self.x_unlabeled):
                raise ValueError(
                    f"{self.name}: x_unlabeled holds no {_rows(self.x_unlabeled)}; the unlabeled "
                    f"training set needs at least one"
                )
        check_same_inputs(
            {f"x_{p}": getattr(self, f"x_{p}") for p in ("db", "query", "labeled", "unlabeled")},
            self.name,
        )
        labels = [y for y in (self.y_query, self.y_db, self.y_labeled) if y is not None]
        if len({y.ndim for y in labels}) != 1 or len({y.shape[1:] for y in labels}) != 1:
            raise ValueError(
                f"{self.name}: labels must be all int (N,) or all multi-hot (N, classes); got "
                + ", ".join(
                    f"y_{p} {getattr(self, f'y_{p}').shape}"
                    for p in ("query", "db", "labeled")
                    if getattr(self, f"y_{p}") is not None
                )
            )
        if self.num_classes is None:
            self.num_classes = _infer_num_classes(labels)
        else:
            needed = _infer_num_classes(labels)
            wrong = needed != self.num_classes if labels[0].ndim == 2 else needed > self.num_classes
            if wrong:
                raise ValueError(
                    f"{self.name}: num_classes={self.num_classes} but the labels "
                    + (
                        f"have {needed} classes"
                        if labels[0].ndim == 2
                        else f"hold class id {needed - 1}"
                    )
                )

    @property
    def takes_vectors(self):
        """Whether the parts are embeddings (N, D) rather than images."""
        return is_vectors(self.x_db)

    @property
    def input_shape(self):
        """The shape of one input: (D,) for embeddings, (H, W, 3) for images."""
        return tuple(int(v) for v in self.x_db.shape[1:])

    @property
    def has_training_data(self):
        return self.x_labeled is not None and self.x_unlabeled is not None

    @property
    def streamed(self):
        """Whether any part is read from image files when drawn (`ImageFiles`)."""
        from gpq_keras.data.image_files import ImageFiles

        return any(
            isinstance(x, ImageFiles)
            for x in (self.x_query, self.x_db, self.x_labeled, self.x_unlabeled)
        )

    def validation_database(self, x_validation):
        """(x, y) the validation images `x_validation` (`hold_out_validation`'s) are searched
        among: the database, or under `unseen` the database of every class (its validation images
        are of the seen classes, its database of the unseen ones), without the validation images
        themselves (where the database holds the labeled images: a folder, cifar10-1), told apart
        by their paths (files) or their pool positions (`index["validation"]`)."""
        from gpq_keras.data.image_files import ImageFiles

        x, y, key = self.x_db, self.y_db, "database"
        if self.x_db_all is not None:
            x, y, key = self.x_db_all, self.y_db_all, "database_all"
        if isinstance(x, ImageFiles) and isinstance(x_validation, ImageFiles):
            keep = ~np.isin(x.paths.astype(str), x_validation.paths.astype(str))
        elif self.pooled and key in self.index and "validation" in self.index:
            keep = ~np.isin(self.index[key], self.index["validation"])
        else:
            return x, y
        return (x, y) if keep.all() else (x[keep], np.asarray(y)[keep])

    def part_sizes(self, validation=0):
        """{"query", "labeled", "unlabeled", "database", "validation"} -> images in each part."""
        sizes = {}
        for part, (attr, _) in PARTS.items():
            images = getattr(self, attr)
            sizes[part] = 0 if images is None else len(images)
        return {**sizes, "validation": int(validation)}


def _rows(inputs):
    """What the rows of checked inputs are, in messages: "images" or "embeddings"."""
    return "embeddings" if is_vectors(inputs) else "images"


def protocol_split(images, labels, query_every=60, labeled_per_class=500, name="data"):
    """Split labelled images as the paper does for CIFAR-10.

    Sort by label (stably), take every `query_every`-th image as a query, then in each class the
    first `labeled_per_class` of the rest are labeled training data and the others the unlabeled
    set, which is also the retrieval database. CIFAR-10's 60,000 give 1,000 / 5,000 / 54,000.

    Raises ValueError (one line, with the counts) when the data are too small for the protocol:
    every class must keep at least one labeled and one unlabeled image after the queries.
    """
    for arg, value in (("query_every", query_every), ("labeled_per_class", labeled_per_class)):
        check_count(arg, value, where=name)
    labels = check_labels(labels, f"{name}: labels")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{name}: expected one int label per image; got labels {labels.shape} "
            f"for images {np.shape(images)}"
        )
    if not len(labels):
        raise ValueError(f"{name}: no images to split")
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    is_query = np.zeros(len(labels), bool)
    is_query[::query_every] = True
    rest = np.flatnonzero(~is_query)
    classes, total = np.unique(labels, return_counts=True)
    left = np.bincount(np.searchsorted(classes, labels[rest]), minlength=len(classes))
    short = np.flatnonzero(left <= labeled_per_class)
    if len(short):
        c = short[0]
        raise ValueError(
            f"{name}: too few images for the protocol (query_every={query_every}, "
            f"labeled_per_class={labeled_per_class}): class {classes[c]} has {total[c]} images, "
            f"{total[c] - left[c]} of them queries, which leaves {left[c]} labeled and no "
            f"unlabeled (database) image; every class needs more than {labeled_per_class} images "
            f"besides its queries ({len(labels)} images, {int(is_query.sum())} queries in all)"
        )
    rank_in_class = np.arange(len(rest)) - np.searchsorted(
        labels[rest], labels[rest]
    )  # rest is sorted
    labeled, unlabeled = (
        rest[rank_in_class < labeled_per_class],
        rest[rank_in_class >= labeled_per_class],
    )
    return Split(
        x_query=images[is_query],
        y_query=labels[is_query],
        x_db=images[unlabeled],
        y_db=labels[unlabeled],
        x_labeled=images[labeled],
        y_labeled=labels[labeled],
        num_classes=int(labels.max()) + 1,
        name=name,
        protocol="gpq",
        pooled=True,
        index={
            "query": order[is_query],
            "labeled": order[labeled],
            "unlabeled": order[unlabeled],
            "database": order[unlabeled],
        },
    )


def class_counts(labels, num_classes):
    """Images per class, int64 (num_classes,), of int ids (N,) or multi-hot rows (N, classes):
    an image counts for each of its labels."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return (labels != 0).sum(0).astype(np.int64)
    return np.bincount(labels, minlength=num_classes)[:num_classes]


def default_validation_per_class(split):
    """A tenth of the smallest labeled class (at least 1; 0 when a class has a single labeled
    image, which must train): the default of `hold_out_validation`."""
    counts = class_counts(split.y_labeled, split.num_classes)
    counts = counts[counts > 0]
    if not len(counts) or counts.min() < 2:
        return 0
    return max(1, int(counts.min()) // 10)


def hold_out_validation(split, per_class):
    """Hold labeled images out of training for validation -> (training split, x_val, y_val).

    The first `per_class` labeled images of each class (in order) are held out (their pool
    positions go to the training split's `index["validation"]`); with multi-hot
    labels an image counts for each of its classes and is held out while one of them still needs
    images. The test queries are never touched. `per_class=0` holds nothing out (x_val and y_val are
    None).
    """
    if not split.has_training_data:
        raise ValueError(
            f"{split.name}: no labeled training images to hold validation images out of"
        )
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise ValueError(f"per_class must be an int >= 0; received per_class={per_class!r}")
    if per_class == 0:
        return split, None, None
    y = np.asarray(split.y_labeled)
    if y.ndim == 1:  # the first per_class of each class, without a one-hot (N, classes) matrix
        order = np.argsort(y, kind="stable")
        rank = np.empty(len(y), np.int64)
        rank[order] = np.arange(len(y)) - np.searchsorted(y[order], y[order])
        held = rank < per_class
    else:
        hot = y != 0
        taken = np.zeros(hot.shape[1], np.int64)
        held = np.zeros(len(y), bool)
        for i in range(len(y)):  # one pass in order; cheap next to training
            wanted = hot[i] & (taken < per_class)
            if wanted.any():
                held[i] = True
                taken += hot[i]
    if held.all():
        raise ValueError(
            f"{split.name}: holding out {per_class} labeled images per class leaves none for "
            f"training ({len(y)} labeled images); use a smaller --val-per-class"
        )
    index = dict(split.index)
    if "labeled" in index:
        index["validation"] = index["labeled"][held]
        index["labeled"] = index["labeled"][~held]
    x_val = split.x_labeled[held]
    train = dataclasses.replace(
        split, x_labeled=split.x_labeled[~held], y_labeled=y[~held], index=index
    )
    if "validation" not in index:  # positions of its own array
        train.index["validation"] = np.flatnonzero(held)
    return train, x_val, y[held]


def check_training_labels(split):
    """Raise ValueError (one line) unless the labeled set can train GPQ: int ids in [0, num_classes)
    or multi-hot rows of num_classes 0/1 values, and images of at least 2 classes.

    An int id outside [0, num_classes) would become an all-zero one-hot row and silently drop out of
    the N-pair and classification losses; with one class the N-pair loss has nothing to tell apart.
    """
    y, num_classes = np.asarray(split.y_labeled), split.num_classes
    where = f"{split.name}: y_labeled"
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            f"{split.name}: num_classes must be an int >= 1; received num_classes={num_classes!r}"
        )
    if (
        y.ndim not in (1, 2)
        or len(y) != len(split.x_labeled)
        or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool)
    ):
        raise ValueError(
            f"{where} must be {len(split.x_labeled)} int class ids (N,) or multi-hot rows "
            f"(N, {num_classes}); got {y.dtype} {y.shape}"
        )
    if y.ndim == 1:
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            raise ValueError(
                f"{where} holds class id {int(y[bad][0])} (labeled image "
                f"{int(np.argmax(bad))}); class ids must be in [0, {num_classes}) for "
                f"num_classes={num_classes}"
            )
        present = len(np.unique(y))
    else:
        if y.shape[1] != num_classes:
            raise ValueError(
                f"{where} has {y.shape[1]} classes per row but num_classes={num_classes}"
            )
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise ValueError(
                f"{where} holds {int(y[bad][0])} (labeled image {int(np.argmax(bad.any(1)))}); "
                f"multi-hot labels must be 0 or 1"
            )
        present = int((y != 0).any(0).sum())
    if present < 2:
        raise ValueError(
            f"GPQ needs labeled images of at least 2 classes; {split.name}'s labeled set "
            f"({len(y)} images) has {present}"
        )


def check_training_input(split, batch_size, start_step):
    """Raise ValueError (one line) unless `split` can train at `batch_size` from `start_step` -> the
    batch size both streams are drawn at (capped at the smaller set's size)."""
    if not split.has_training_data:
        raise ValueError(f"{split.name}: no labeled/unlabeled training images in this data")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; received batch_size={batch_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0; received start_step={start_step}")
    check_training_labels(split)
    if not len(split.x_unlabeled):
        raise ValueError(f"{split.name}: the unlabeled training set holds no images")
    return min(batch_size, len(split.x_labeled), len(split.x_unlabeled))


def steps_per_epoch(split, batch_size):
    """Steps of the original's epoch, one pass over the labeled images at the batch size both
    streams are drawn at -> int >= 1 (what the pipelines return beside their dataset), after
    `check_training_input`."""
    return max(1, len(split.x_labeled) // check_training_input(split, batch_size, 0))


RECORD_PARTS = (*PARTS, "validation")


def split_arrays(split, x_validation=None):
    """What `split.npz` keeps of a split: for each part (`RECORD_PARTS`) its image files'
    absolute paths (`{part}_paths`, str) or its positions in the source's pool (`{part}_index`,
    int64; `Split.index`), and the `protocol` and `seed` -> {name: array}.

    `x_validation` are the validation images held out of training (`hold_out_validation`), whose
    positions are `split.index["validation"]`."""
    from gpq_keras.data.image_files import ImageFiles

    parts = {part: getattr(split, x) for part, (x, _) in PARTS.items()}
    parts["validation"] = x_validation
    out = {
        "protocol": np.array(str(split.protocol)),
        "seed": np.array(-1 if split.seed is None else int(split.seed), np.int64),
    }
    for part, images in parts.items():
        if images is None:
            continue
        if isinstance(images, ImageFiles):
            paths = [os.path.abspath(path) for path in images.paths]  # the same from any folder
            out[f"{part}_paths"] = np.array(paths, dtype=str).reshape(-1)
        elif part in split.index:
            out[f"{part}_index"] = np.asarray(split.index[part], np.int64)
        else:
            out[f"{part}_index"] = np.arange(len(images), dtype=np.int64)
    return out


def compare_split_arrays(stored, current, where):
    """None when the arrays of two `split_arrays` name the same images, else one line saying which
    part differs first (for a resumed run or `evaluate --split`: the data changed)."""
    for key in sorted(set(stored) | set(current)):
        if key in ("protocol", "seed"):
            continue
        a, b = stored.get(key), current.get(key)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            part = key.rsplit("_", 1)[0]
            sizes = [None if x is None else len(x) for x in (a, b)]
            return (
                f"{where}: the {part} images differ from those the run was trained with "
                f"({sizes[0]} then, {sizes[1]} now); the data changed since"
            )
    return None
