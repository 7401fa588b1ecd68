"""What `gpq data check` reports of a split: the parts, the classes, the files that do not read.

```python
report = check_split(split)  # every image file decoded once, a batch at a time
report["parts"], report["per_class"], report["unreadable"], report["overlaps"]
problems = training_problems(split, report)  # [] when the data can train
```

The keys are those of `../shared/CLI.md` (`gpq data check --json`): `parts`, `num_classes`,
`per_class`, `zero_label_rows`, `unreadable`, `overlaps`, `protocol`, `seen_classes`,
`unseen_classes`, and `input`: `{"kind": "images" | "image files" | "embeddings", "shape": one
input's shape}`. A split of embeddings has no files: nothing to decode, the rest the same.
"""

import dataclasses
import os

import numpy as np

from gpq_keras.data.image_files import ImageFiles
from gpq_keras.data.split import PARTS, check_training_labels, class_counts, is_vectors

__all__ = [
    "check_split",
    "input_kind",
    "per_class_counts",
    "training_problems",
    "undecodable_files",
    "without_files",
]

_LABELED_PARTS = {part: y for part, (_, y) in PARTS.items() if y is not None}


def per_class_counts(labels, num_classes):
    """Images per class [num_classes ints] of int ids or multi-hot rows (an image counts for each
    of its labels; `gpq_keras.data.split.class_counts`); zeros for no labels."""
    if labels is None:
        return [0] * num_classes
    return [int(v) for v in class_counts(labels, num_classes)]


def _zero_label_rows(labels):
    if labels is None:
        return 0
    labels = np.asarray(labels)
    return int((~(labels != 0).any(1)).sum()) if labels.ndim == 2 else 0


def _identities(images, part, split):
    """What makes two images of the split the same: (device, inode) of each file (the path where it
    cannot be stat'ed), or the position in the source's pool; None when unknown."""
    if isinstance(images, ImageFiles):
        out = []
        for path in images.paths:
            try:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino))
            except OSError:
                out.append(os.path.abspath(path))
        return out
    index = split.index.get(part)
    return None if index is None else [int(i) for i in index]


def _overlap(split, a, b):
    """Images of part `a` that are also in part `b` (the same file, or the same pool position)."""
    x_a, x_b = getattr(split, PARTS[a][0]), getattr(split, PARTS[b][0])
    if x_a is None or x_b is None or isinstance(x_a, ImageFiles) != isinstance(x_b, ImageFiles):
        return 0
    ids_a, ids_b = _identities(x_a, a, split), _identities(x_b, b, split)
    if ids_a is None or ids_b is None:
        return 0
    other = set(ids_b)
    return sum(1 for i in ids_a if i in other)


def undecodable_files(split, batch_size=256):
    """[(path, reason)] of the files of every part that do not decode (each file read once, a
    batch at a time: memory bounded by the batch)."""
    from gpq_keras.data.images import read_images

    files, seen = [], set()
    for attr, _ in PARTS.values():
        images = getattr(split, attr)
        if isinstance(images, ImageFiles):
            for path in images.paths:
                if path not in seen:
                    seen.add(path)
                    files.append((path, images))
    bad = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        first = chunk[0][1]
        got = read_images(
            [path for path, _ in chunk],
            first.image_size,
            batch_size=batch_size,
            antialias=first.antialias,
            max_pixels=first.max_pixels,
            skip_unreadable=True,
        )
        bad.extend(got.skipped)
    return bad


def input_kind(split):
    """{"kind": "embeddings" | "image files" | "images", "shape": [one input's shape]} of a
    split's database."""
    x = split.x_db
    kind = "embeddings" if is_vectors(x) else "image files" if split.streamed else "images"
    return {"kind": kind, "shape": [int(v) for v in x.shape[1:]]}


def check_split(split, decode=True, batch_size=256):
    """The report of `gpq data check` on `split` (see the module docstring) -> dict.

    `unreadable` lists the files the loader left out (`split.skipped`) and, with `decode`, those
    of its parts that do not decode."""
    num_classes = int(split.num_classes)
    sizes = split.part_sizes(len(split.index.get("validation", ())))
    unreadable = [(path, str(why)) for path, why in split.skipped]
    if decode:
        unreadable += undecodable_files(split, batch_size)

    def classes(values):
        return None if values is None else [int(c) for c in values]

    return {
        "parts": sizes,
        "input": input_kind(split),
        "num_classes": num_classes,
        "class_names": None if split.class_names is None else list(split.class_names),
        "per_class": {
            part: per_class_counts(getattr(split, attr), num_classes)
            for part, attr in _LABELED_PARTS.items()
        },
        "zero_label_rows": {
            part: _zero_label_rows(getattr(split, a)) for part, a in _LABELED_PARTS.items()
        },
        "unreadable": [os.fsdecode(path) for path, _ in unreadable],
        "unreadable_reasons": [why for _, why in unreadable],
        "overlaps": {
            "query_labeled": _overlap(split, "query", "labeled"),
            "query_database": _overlap(split, "query", "database"),
        },
        "protocol": split.protocol,
        "seed": split.seed,
        "seen_classes": classes(split.seen_classes),
        "unseen_classes": classes(split.unseen_classes),
    }


def training_problems(split, report, skip_unreadable=False):
    """The reasons, one line each and the first first, why `split` cannot train GPQ (empty when it
    can): unreadable files (not with `skip_unreadable`: training leaves them out), labels of fewer
    than 2 classes, no unlabeled images, queries that are also training images."""
    problems = []
    if report["unreadable"] and not skip_unreadable:
        count = len(report["unreadable"])
        problems.append(
            f"{count} image file{'' if count == 1 else 's'} cannot be read, first: "
            f"{report['unreadable_reasons'][0]}"
        )
    if not split.has_training_data or not report["parts"]["labeled"]:
        problems.append(f"{split.name}: no labeled training images")
    else:
        try:
            check_training_labels(split)
        except ValueError as exc:
            problems.append(str(exc))
    if not report["parts"]["unlabeled"]:
        problems.append(f"{split.name}: no unlabeled training images")
    if report["overlaps"]["query_labeled"]:
        problems.append(
            f"{split.name}: {report['overlaps']['query_labeled']} queries are also labeled "
            "training images"
        )
    return problems


_PART_ARRAYS = {**PARTS, "database_all": ("x_db_all", "y_db_all")}  # unseen's database


def without_files(split, paths):
    """`split` without the image files `paths` in any of its `ImageFiles` parts (with their
    labels and `index` positions): what `--skip-unreadable` leaves out of a streamed run."""
    bad = np.asarray([os.fsdecode(p) for p in paths], dtype=str)
    changes, index = {}, dict(split.index)
    for part, (x_attr, y_attr) in _PART_ARRAYS.items():
        images = getattr(split, x_attr)
        if not isinstance(images, ImageFiles):
            continue
        keep = ~np.isin(images.paths.astype(str), bad)
        if keep.all():
            continue
        changes[x_attr] = images[keep]
        if y_attr is not None and getattr(split, y_attr) is not None:
            changes[y_attr] = np.asarray(getattr(split, y_attr))[keep]
        if part in index and len(index[part]) == len(keep):
            index[part] = np.asarray(index[part])[keep]
    if not changes:
        return split
    if "x_unlabeled" not in changes and split.x_unlabeled is split.x_db:
        changes["x_unlabeled"] = changes.get("x_db", split.x_db)
    out = dataclasses.replace(split, index=index, **changes)
    out.skipped = list(split.skipped)
    return out
