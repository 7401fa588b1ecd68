"""Your own collection as list files: `relative/path.jpg 0 1 0 ...` per line (`list:` specs).

```python
split = lists.load_split("lists/", "images/", image_size=64)  # ImageFiles parts, nothing decoded
entries = lists.read_list("lists/train.txt")  # ListEntries(paths, labels uint8 (N, W), lines)
```

LIST_DIR holds `train.txt` (labeled training set), `database.txt` (retrieval database) and
`test.txt` (queries), each a path under IMAGE_ROOT (default LIST_DIR) and W 0/1 labels, one-hot or
multi-hot, W >= 1 the same on every line of every list; a row with no label is kept (it is relevant
to nothing). An optional `unlabeled.txt` lists paths only: the unlabeled training set, else the
database is. An item is relevant to a query when they share at least one label
(`gpq_keras.data.labels.relevance`). HashNet's NUS-WIDE lists are this format with W = 21
(`gpq_keras.data.nuswide`).

The lists are read as text the safe way (`gpq_keras.files.open_regular`; UTF-8; a NUL byte or a
byte that is not UTF-8 is named with its line) and every error is one `ListFormatError` line
naming the file and the line. A path may not leave IMAGE_ROOT (absolute, or climbing out with
`..`). At load every image's header is checked (`gpq_keras.data.images.check_image_files`: a
regular file, a JPEG/PNG/GIF/BMP/WebP, at most `max_pixels`), nothing decoded: the parts are
`ImageFiles` (antialiased, as the original resized NUS-WIDE) read when a batch is drawn.
"""

import collections
import io
import os

import numpy as np

from gpq_keras.data.images import DEFAULT_MAX_PIXELS, check_image_files
from gpq_keras.data.split import MAX_CLASSES, Split, check_count
from gpq_keras.files import FileFormatError, UnreadableFile, display_path, open_regular

__all__ = [
    "LIST_FILES",
    "UNLABELED_FILE",
    "ListEntries",
    "ListFormatError",
    "has_unlabeled_list",
    "load_split",
    "read_list",
    "resolve_paths",
]

# Split part -> its list file, in the order they are read (train.txt sets the label width)
LIST_FILES = {"labeled": "train.txt", "database": "database.txt", "query": "test.txt"}
UNLABELED_FILE = "unlabeled.txt"
_FIELDS = {"labeled": "labeled", "database": "db", "query": "query"}  # Split's x_/y_ names

ListEntries = collections.namedtuple("ListEntries", ["paths", "labels", "lines"])
ListEntries.__doc__ = """What `read_list` read: `paths` (list[str], as written), `labels` (uint8
(N, W) 0/1, or None for a list of paths only) and `lines` (int64 (N,), the 1-based line of each
entry)."""


class ListFormatError(FileFormatError):
    """A malformed line in a list file; the message, one line, names the file and the line
    ("PATH:LINE: why")."""


def _decode_check(line, shown, number):
    """Refuse a NUL byte or a byte that is not UTF-8 (kept by surrogateescape) in a line."""
    if "\0" in line:
        raise ListFormatError(f"{shown}:{number}: a NUL byte; not a text list file")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00  # surrogateescape keeps the byte in U+DC80..U+DCFF
        raise ListFormatError(
            f"{shown}:{number}: not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1})"
        ) from None


def read_list(path, width=None, labeled=True, _width_from=None):
    """A list file -> `ListEntries(paths, labels, lines)`; blank lines are skipped.

    labeled: each line is `path l1 ... lW`, W 0/1 labels read from the first line (it must equal
    `width` when given); labels uint8 (N, W), rows of zeros kept. `labeled=False` (unlabeled.txt):
    a path per line, labels None.

    Raises FileNotFoundError for a missing file, `gpq_keras.files.UnreadableFile` for one that is
    not a regular file, and `ListFormatError` ("PATH:LINE: why") for a NUL byte, a byte that is not
    UTF-8, a line that starts with a label instead of a path, a label count other than W, a label
    not 0 or 1, more than a path on an unlabeled line, or a file with no entries.
    """
    path = os.fspath(path)
    shown = display_path(path)
    if width is not None:
        width = check_count("width", width, where=shown)
    if width is not None and _width_from is None:
        _width_from = ""
    paths, lines, hot = [], [], bytearray()
    # surrogateescape: a byte that is not UTF-8 reaches its line, which is then named in the error
    raw = open_regular(path, "list file")  # a FIFO or a device is refused, not read
    with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, start=1):
            _decode_check(line, shown, number)
            fields = line.split()
            if not fields:
                continue
            where = f"{shown}:{number}"
            if not labeled:
                if len(fields) > 1:
                    raise ListFormatError(
                        f"{where}: expected an image path alone, found {len(fields) - 1} more "
                        f"fields; {os.path.basename(path)} lists paths without labels"
                    )
            elif fields[0] in ("0", "1"):
                raise ListFormatError(
                    f"{where}: the line starts with a label ({fields[0]!r}), not an image path"
                )
            else:
                values = fields[1:]
                if width is None:
                    if not values:
                        raise ListFormatError(
                            f"{where}: expected a path and at least one 0/1 label, found 0 labels"
                        )
                    if len(values) > MAX_CLASSES:
                        raise ListFormatError(
                            f"{where}: {len(values)} labels; at most {MAX_CLASSES} classes are "
                            "supported"
                        )
                    width, _width_from = len(values), f" as on line {number}"
                if len(values) != width:
                    raise ListFormatError(
                        f"{where}: expected a path and {width} 0/1 labels{_width_from}, "
                        f"found {len(values)} labels"
                    )
                bad = next((v for v in values if v not in ("0", "1")), None)
                if bad is not None:
                    raise ListFormatError(f"{where}: labels must be 0 or 1, found {bad!r}")
                hot += bytes(v == "1" for v in values)
            paths.append(fields[0])
            lines.append(number)
    if not paths:
        raise ListFormatError(f"{shown}: no entries; the list names no images")
    labels = (
        np.frombuffer(bytes(hot), np.uint8).reshape(len(paths), width).copy() if labeled else None
    )
    return ListEntries(paths, labels, np.asarray(lines, np.int64))


def resolve_paths(entries, image_root, list_path):
    """The `ListEntries` paths joined under `image_root` -> list[str].

    Raises `ListFormatError` ("LIST:LINE: 'path' leaves IMAGE_ROOT (...)") for an absolute path
    or one that climbs out of `image_root` with `..` (after `os.path.normpath`): a list file only
    names images under its root.
    """
    root = os.fsdecode(os.fspath(image_root))
    shown = display_path(os.fspath(list_path))
    full = []
    for path, line in zip(entries.paths, entries.lines):
        why = None
        if os.path.isabs(path) or os.path.splitdrive(path)[0]:
            why = "an absolute path"
        else:
            norm = os.path.normpath(path)
            if norm == os.pardir or norm.startswith(os.pardir + os.sep):
                why = "'..' climbs out of it"
        if why is not None:
            raise ListFormatError(
                f"{shown}:{int(line)}: '{display_path(path)}' leaves IMAGE_ROOT "
                f"({display_path(root)}): {why}; list paths are relative to IMAGE_ROOT"
            )
        full.append(os.path.join(root, path))
    return full


def has_unlabeled_list(list_dir):
    """Whether `list_dir` has its own unlabeled set (`unlabeled.txt`, read by `load_split`)."""
    return os.path.lexists(os.path.join(os.fspath(list_dir), UNLABELED_FILE))


def _check_files(parts, max_pixels, skip_unreadable):
    """Check every image of `parts` {part: (list path, entries, full paths)} once (headers only)
    -> {part: bool mask of the usable entries}, [(path, reason)] of the others.

    Without `skip_unreadable` the first bad image, in list order, raises FileNotFoundError or
    `UnreadableFile` naming its list file and line."""
    unique = list(dict.fromkeys(p for _, _, full in parts.values() for p in full))
    _, bad = check_image_files(unique, max_pixels, skip_unreadable=True)
    reasons = dict(bad)
    masks, skipped = {}, []
    for part, (list_path, entries, full) in parts.items():
        mask = np.array([p not in reasons for p in full], bool)
        shown = display_path(list_path)
        for i in np.flatnonzero(~mask):
            where = f"{shown}:{int(entries.lines[i])}"
            if skip_unreadable:
                skipped.append((full[i], f"{where}: {reasons[full[i]]}"))
                continue
            error = UnreadableFile
            try:  # again, alone, for the kind of error (missing or unreadable)
                check_image_files([full[i]], max_pixels)
            except FileNotFoundError:
                error = FileNotFoundError
            except (OSError, FileFormatError):
                pass
            others = int((~mask).sum()) - 1
            more = f" (and {others} more of its {len(full)} images)" if others else ""
            raise error(f"{where}: {reasons[full[i]]}{more}")
        masks[part] = mask
    return masks, skipped


def load_split(
    list_dir,
    image_root=None,
    image_size=32,
    width=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
    name=None,
):
    """The list files of `list_dir` as a `Split` of `ImageFiles` (read at `image_size`,
    antialiased, when a batch is drawn): labeled = train.txt, database = database.txt, queries =
    test.txt, unlabeled = unlabeled.txt when there is one, else the database.

    Paths are relative to `image_root` (default `list_dir`). The label width W is read from
    train.txt (it must equal `width` when given) and every list must have it. Every list is read
    before any image is looked at; then each image's header is checked (a regular file, an image,
    at most `max_pixels`), nothing decoded. A bad image raises FileNotFoundError or
    `gpq_keras.files.UnreadableFile` naming the list file and the line; with `skip_unreadable` it
    is left out with its labels and listed as (path, "LIST:LINE: reason") in the split's
    `skipped`. An image that does not decode is named when a batch reads it.

    The split: `num_classes` W, `name` (default the basename of `list_dir`), `protocol` "given",
    `index` {part: int64 rows (0-based entries) of its list file that were kept}; "unlabeled" is
    the database's rows when there is no unlabeled.txt.
    """
    from gpq_keras.data.image_files import ImageFiles

    list_dir = os.fspath(list_dir)
    if not os.path.isdir(list_dir):
        raise FileNotFoundError(f"list folder not found: {display_path(list_dir)}")
    image_root = list_dir if image_root is None else os.fspath(image_root)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {display_path(image_root)}")
    if name is None:
        name = os.path.basename(os.path.abspath(list_dir)) or "list"
    files = {part: os.path.join(list_dir, filename) for part, filename in LIST_FILES.items()}
    if has_unlabeled_list(list_dir):
        files["unlabeled"] = os.path.join(list_dir, UNLABELED_FILE)
    entries, width_from = {}, None  # every list read before any image is looked at
    for part, path in files.items():
        if part == "unlabeled":
            entries[part] = read_list(path, labeled=False)
            continue
        entries[part] = read_list(path, width, _width_from=width_from)
        if width is None:
            width = entries[part].labels.shape[1]
            width_from = f" as in {display_path(path)}"
    parts = {
        part: (files[part], got, resolve_paths(got, image_root, files[part]))
        for part, got in entries.items()
    }
    masks, skipped = _check_files(parts, max_pixels, skip_unreadable)
    fields, index = {}, {}
    for part, (list_path, got, full) in parts.items():
        kept = np.flatnonzero(masks[part])
        if not len(kept):
            raise ValueError(
                f"{display_path(list_path)}: none of its {len(full)} images could be used "
                f"(all skipped as unreadable)"
            )
        images = ImageFiles(
            [full[i] for i in kept], image_size, antialias=True, max_pixels=max_pixels
        )
        index[part] = kept.astype(np.int64)
        if part == "unlabeled":
            fields["x_unlabeled"] = images
        else:
            fields[f"x_{_FIELDS[part]}"] = images
            fields[f"y_{_FIELDS[part]}"] = got.labels[kept]
    index.setdefault("unlabeled", index["database"])
    return Split(
        **fields,
        num_classes=width,
        name=name,
        skipped=skipped,
        protocol="given",
        index=index,
    )
