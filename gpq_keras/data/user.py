"""The user's own data: an `.npz` of ready splits or of one labeled pool, or a folder of class
sub-folders with an optional unlabeled pool.

```python
# x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled): images or embeddings
split = user.load_npz("mydata.npz")
# x_db float32 (N, D), y_db (+ class_names), as `gpq embed` writes it: one labeled pool that the
# protocols split as they split a folder (given: a tenth of each class held out as queries)
split = user.load_npz("emb.npz", protocol="gpq")
# photos/cat/*.jpg, photos/dog/*.png ...: every labeled image trains, pool/ feeds the unlabeled
# stream; the parts are ImageFiles, read at 128x128 when a batch is drawn
split = user.load_folder("photos/", image_size=128, unlabeled="pool/")
```
"""

import collections
import errno
import fnmatch
import functools
import glob
import os
import stat

import numpy as np

from gpq_keras.data.images import DEFAULT_MAX_PIXELS, image_hw
from gpq_keras.data.split import (
    MAX_CLASSES,
    Split,
    check_count,
    check_inputs,
    check_labels,
    describe_inputs,
    is_vectors,
)
from gpq_keras.files import (
    FileFormatError,
    UnreadableFile,
    atomic_path,
    display_path,
    file_kind,
    read_npz,
    read_npz_keys,
)

REQUIRED_KEYS = ("x_query", "y_query", "x_db", "y_db")
OPTIONAL_KEYS = ("x_labeled", "y_labeled", "x_unlabeled")
POOL_KEYS = ("x_db", "y_db")  # an npz without x_query: one labeled pool (+ x_unlabeled)
NAMES_KEY = "class_names"  # str (num_classes,), read when present
UNSEEN_FRACTION = 0.75  # `protocols.UNSEEN_FRACTION` (not imported: protocols imports split)


def _refuse(check, *args):
    """Run a ValueError check of split.py and give its message as a FileFormatError."""
    try:
        return check(*args)
    except ValueError as exc:
        raise FileFormatError(str(exc)) from None


def npz_layout(path):
    """What an `.npz` holds, told by its array names (only its zip directory is read):

    - "parts": ready parts (x_query, y_query, x_db, y_db, ...), or arrays missing (`load_npz`
      names them);
    - "pool": x_db and y_db without x_query, one labeled pool that the protocols split (what
      `gpq embed` writes for class sub-folders);
    - "unlabeled": x_db or x_unlabeled without any labels: an unlabeled set only (`unlabeled=`).

    Raises FileNotFoundError for a missing file, FileFormatError for one that is not a zip.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path}")
    keys = set(read_npz_keys(path))
    if keys & {"x_query", "y_query"}:
        return "parts"
    if set(POOL_KEYS) <= keys:
        return "pool"
    if keys & {"x_db", "x_unlabeled"} and not keys & {"y_db", "x_labeled", "y_labeled"}:
        return "unlabeled"
    return "parts"


def _check_arrays(path, arrays):
    """The checked `x_*` (images or float32 embeddings) and `y_*` arrays of an npz, in place;
    FileFormatError naming the file and the array for the first one at fault."""
    if ("x_labeled" in arrays) != ("y_labeled" in arrays):
        raise FileFormatError(f"{path}: x_labeled and y_labeled go together")
    for key, value in arrays.items():
        if key.startswith("x_"):
            value = arrays[key] = _refuse(check_inputs, value, f"{path}: '{key}'")
        else:
            _refuse(check_labels, value, f"{path}: '{key}'")
        if not len(value):
            what = "label"
            if key.startswith("x_"):
                what = "embedding" if is_vectors(value) else "image"
            raise FileFormatError(
                f"{path}: '{key}' is empty {value.shape}; every array needs at least one {what}"
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
                f"{path}: 'x_{part}' holds {len(arrays[f'x_{part}'])} "
                f"{'rows' if is_vectors(arrays[f'x_{part}']) else 'images'} but 'y_{part}' "
                f"{len(arrays[f'y_{part}'])} labels"
            )
    x_keys = sorted((k for k in arrays if k.startswith("x_")), key=lambda k: k != "x_db")
    if any(is_vectors(arrays[k]) for k in x_keys):
        first = x_keys[0]
        for key in x_keys[1:]:
            if is_vectors(arrays[key]) != is_vectors(arrays[first]):
                why = "every array must be of one kind"
            elif arrays[key].shape[1:] != arrays[first].shape[1:]:
                why = "all embeddings must have one width"
            else:
                continue
            raise FileFormatError(
                f"{path}: '{key}' are {describe_inputs(arrays[key])} but '{first}' are "
                f"{describe_inputs(arrays[first])}; {why}"
            )
    elif len({arrays[k].shape[1:] for k in x_keys}) != 1:
        raise FileFormatError(
            f"{path}: all images must have one size; got "
            + ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k.startswith("x_"))
        )
    return arrays


def _class_names(path, names, arrays):
    """An npz's `class_names` array `names` (or None) as a tuple of str, or None; FileFormatError
    unless it is a 1-D str array naming every class of the checked labels in `arrays`."""
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US" or not 0 < len(names) <= MAX_CLASSES:
        raise FileFormatError(
            f"{path}: '{NAMES_KEY}' must be a 1-D str array of 1 to {MAX_CLASSES} names, one "
            f"per class; got {names.dtype} {names.shape}"
        )
    for key in ("y_query", "y_db", "y_labeled"):
        y = arrays.get(key)
        if y is None or not y.size:
            continue
        if y.ndim == 2 and y.shape[1] != len(names):
            raise FileFormatError(
                f"{path}: '{NAMES_KEY}' names {len(names)} classes but '{key}' has "
                f"{y.shape[1]} per row"
            )
        if y.ndim == 1 and int(y.max()) >= len(names):
            raise FileFormatError(
                f"{path}: '{NAMES_KEY}' names {len(names)} classes but '{key}' holds class id "
                f"{int(y.max())}"
            )
    return tuple(
        n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()
    )


def load_npz(
    path,
    name=None,
    protocol=None,
    seed=0,
    unlabeled=None,
    query_every=10,
    labeled_per_class=None,
    query_per_class=None,
    fraction=UNSEEN_FRACTION,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
):
    """A `Split` from an `.npz` (`npz_layout`): ready parts `x_query, y_query, x_db, y_db` (and
    optionally training arrays), or one labeled pool `x_db, y_db` (+ `x_unlabeled`) without
    `x_query`, split by the protocols as `load_folder` splits a folder.

    Inputs: uint8 images (N, H, W, 3) or float embeddings (N, D), kept as float32 (`check_inputs`:
    finite), of one kind and size everywhere; labels int class ids in [0, 65536) (N,) or
    multi-hot 0/1 (N, classes), the same kind everywhere (a pool: int ids); no array empty.
    `class_names` (str, one per class) names the classes when present. Without `x_unlabeled` the
    database is the unlabeled set, as in the paper. Other members (`sources`) are ignored.

    A pool takes the protocol options of `load_folder`: `protocol` (default "given", or "gpq"
    with `labeled_per_class`), `seed`, `query_every`, `labeled_per_class`, `query_per_class`,
    `fraction`, and `unlabeled`, the unlabeled stream (`load_unlabeled`: an npz of the same kind
    and size, or for images a folder or glob read with `max_pixels` and `skip_unreadable`).
    Ready parts keep theirs (`load_data` applies unseen and `unlabeled` to them). An npz of
    unlabeled inputs only is refused: it has no labels.

    Every array's .npy header is read first: pickled objects are refused, and so is an array larger
    than its member of the zip or than the memory available, before anything is allocated. Raises
    FileNotFoundError for a missing file and FileFormatError (a ValueError), one line naming the
    file and the array at fault, for anything else.
    """
    path = os.fspath(path)
    layout = npz_layout(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    if layout == "unlabeled":
        raise FileFormatError(
            f"{path}: holds no labels (no 'y_db'): an npz of unlabeled inputs only goes to "
            "--unlabeled; as data an npz needs x_db and y_db (one labeled pool) or x_query, "
            "y_query, x_db, y_db (ready parts)"
        )
    if layout == "pool":
        pool, x_unlabeled = read_npz_pool(path, name)
        if unlabeled is not None and x_unlabeled is not None:
            raise ValueError(f"--unlabeled: {path} carries its own unlabeled set ('x_unlabeled')")
        stream = None
        if unlabeled is not None:
            shape = pool.images.shape[1:]
            stream = functools.partial(
                load_unlabeled,
                unlabeled,
                max_pixels=max_pixels,
                skip_unreadable=skip_unreadable,
                input_shape=shape,
            )
        elif x_unlabeled is not None:
            stream = lambda: (x_unlabeled, [])  # noqa: E731
        split, skipped = split_pool(
            pool,
            protocol,
            seed,
            query_every=query_every,
            labeled_per_class=labeled_per_class,
            query_per_class=query_per_class,
            fraction=fraction,
            unlabeled=stream,
        )
        split.skipped = skipped
        return split
    if protocol not in (None, "given") or unlabeled is not None:
        raise ValueError(
            f"{path}: holds ready parts (x_query, ...); protocol= and unlabeled= apply to an npz "
            "without x_query, one labeled pool (load_data applies unseen and --unlabeled to "
            "ready parts)"
        )
    arrays = read_npz(
        path,
        "npz file",
        keys=REQUIRED_KEYS + OPTIONAL_KEYS + (NAMES_KEY,),
        required=REQUIRED_KEYS,
    )
    names = arrays.pop(NAMES_KEY, None)
    class_names = _class_names(path, names, _check_arrays(path, arrays))
    num_classes = None if class_names is None else len(class_names)
    try:
        return Split(**arrays, name=name, num_classes=num_classes, class_names=class_names)
    except ValueError as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def read_npz_pool(path, name=None):
    """The labeled pool of an npz without `x_query` -> (`protocols.Pool` of `x_db`, `y_db` (int
    ids) and `class_names`, its `x_unlabeled` or None), checked as `load_npz` checks."""
    from gpq_keras.data.protocols import Pool

    path = os.fspath(path)
    keys = read_npz_keys(path)
    for key in ("x_labeled", "y_labeled", "y_query"):
        if key in keys:
            raise FileFormatError(
                f"{path}: has '{key}' but no 'x_query'; an npz without x_query is one labeled "
                "pool (x_db, y_db) that the protocols split; give x_query and y_query too for "
                "ready parts"
            )
    arrays = read_npz(
        path, "npz file", keys=POOL_KEYS + ("x_unlabeled", NAMES_KEY), required=POOL_KEYS
    )
    names = arrays.pop(NAMES_KEY, None)
    class_names = _class_names(path, names, _check_arrays(path, arrays))
    if arrays["y_db"].ndim != 1:
        raise FileFormatError(
            f"{path}: 'y_db' is multi-hot {arrays['y_db'].shape}; an npz without x_query is one "
            "pool that the protocols split by class, which needs one int class id per row (N,); "
            "give ready parts (x_query, y_query, x_db, y_db) for multi-hot labels"
        )
    name = name or os.path.splitext(os.path.basename(path))[0]
    num_classes = None if class_names is None else len(class_names)
    try:
        pool = Pool(arrays["x_db"], arrays["y_db"], num_classes, class_names, name)
    except ValueError as exc:
        raise FileFormatError(f"{path}: {exc}") from None
    return pool, arrays.get("x_unlabeled")


def split_pool(
    pool,
    protocol=None,
    seed=0,
    query_every=10,
    labeled_per_class=None,
    query_per_class=None,
    fraction=UNSEEN_FRACTION,
    unlabeled=None,
):
    """The `Split` a protocol makes of one labeled pool (a folder's, an npz's without x_query)
    -> (split, skipped): the protocols of `load_folder`.

    `protocol` None: "given", or "gpq" with `labeled_per_class` (default for gpq: a tenth of the
    smallest class after its queries); "unseen": the given parts (the gpq ones with
    `labeled_per_class`), then `fraction` of the classes seen. `unlabeled`: None (the database
    feeds the unlabeled stream) or a function () -> (x_unlabeled, skipped), called once the
    protocol's parts are made; unseen keeps it.
    """
    from gpq_keras.data.protocols import apply_protocol, unseen_split

    if protocol is None:
        protocol = "gpq" if labeled_per_class is not None else "given"
    if protocol == "given" and labeled_per_class is not None:
        raise ValueError(
            "--labeled-per-class simulates label scarcity with the gpq protocol; the given "
            "protocol trains every labeled image (leave out --protocol given)"
        )
    # unseen: the given parts (every labeled image), or with labeled_per_class the gpq ones
    base = "gpq" if labeled_per_class is not None else "given"
    if protocol == "gpq" and labeled_per_class is None:
        counts = np.bincount(pool.labels, minlength=pool.num_classes)
        rest = counts[counts > 0] * (1 - 1 / check_count("query_every", query_every, pool.name))
        labeled_per_class = max(1, int(rest.min() // 10))
    options = {"query_every": query_every, "labeled_per_class": labeled_per_class}
    if query_per_class is not None:
        options["query_per_class"] = query_per_class
    # unseen: the given parts, then only the seen classes train and the unseen are searched
    split = apply_protocol(pool, base if protocol == "unseen" else protocol, seed, **options)
    skipped = []
    if unlabeled is not None:
        split.x_unlabeled, skipped = unlabeled()
        split.index.pop("unlabeled", None)
    if protocol == "unseen":
        split.num_classes = pool.num_classes
        split = unseen_split(split, fraction, seed, keep_unlabeled=unlabeled is not None)
    split.name = pool.name
    split.num_classes = pool.num_classes
    split.class_names = pool.class_names
    return split, list(skipped)


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

ImageListing = collections.namedtuple("ImageListing", ["paths", "labels", "class_names", "skipped"])
ImageListing.__doc__ = """What `list_images` and `list_folder` found: `paths` (list of str, names
as the operating system gives them), `labels` (int64 (N,) class ids, or None), `class_names`
(tuple, or None) and `skipped`, the (path, reason) of every path left out (empty without
`skip_unreadable`: then the first one is refused)."""


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _Walk:
    """One listing's walk of folders by `LINK_RULE`: the real folders walked (device, inode) ->
    their first path, and the problems found as (path, why), in the order found."""

    def __init__(self):
        self.walked = {}
        self.problems = []

    def problem(self, path, why):
        self.problems.append((path, f"{display_path(path)}: {why}"))

    def enter(self, path, st, is_link, ancestors):
        """Whether to walk the folder `path` (its stat `st`) reached under `ancestors` (the keys
        of the folders above it on this walk); a loop or a repeated link is a problem."""
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            self.problem(
                path,
                f"a link loop (back to {display_path(self.walked.get(key, path))}); not walked",
            )
            return False
        if key in self.walked:
            if is_link:
                self.problem(
                    path,
                    f"a link to {display_path(self.walked[key])}, which is listed already; "
                    "not walked again",
                )
            return False
        self.walked[key] = path
        return True

    def tree(self, top, ancestors=()):
        """(folder, [image file paths sorted]) of `top` (already entered) and every folder below
        it, following links; as `os.walk` lists them: sorted by folder path."""
        found = []
        stack = [(top, (*ancestors, _key(top)))]
        while stack:
            folder, chain = stack.pop()
            files, folders = self.entries(folder)
            found.append((folder, files))
            entered = [
                (path, (*chain, (st.st_dev, st.st_ino)))
                for path, st, is_link in folders
                if self.enter(path, st, is_link, chain)
            ]
            stack.extend(reversed(entered))  # walked in sorted order
        return sorted(found, key=lambda item: item[0])

    def entries(self, folder):
        """([regular image files], [(sub-folder, its stat, whether a link)]) of one folder, sorted
        by name; anything else with an image file name is a problem, and so is a broken link that
        is not hidden."""
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            self.problem(folder, f"cannot be listed ({exc.strerror})")
            return [], []
        files, folders = [], []
        for entry in entries:
            path = os.path.join(folder, entry.name)
            image = _is_image_name(entry.name)
            try:
                is_link = entry.is_symlink()
                st = os.stat(path)
            except OSError as exc:
                if image or not entry.name.startswith("."):
                    self.problem(path, _stat_failure(path, exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append((path, st, is_link))
            elif not image:
                continue
            elif stat.S_ISREG(st.st_mode):
                files.append(path)
            else:
                self.problem(path, f"{file_kind(st.st_mode)}, not a regular file")
        return files, folders


def _key(path):
    """The real folder (device, inode) `path` is."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _stat_failure(path, exc):
    """Why `os.stat(path)` failed, in words."""
    if exc.errno == errno.ELOOP:
        return "a link loop"
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return f"a broken link (to {display_path(os.readlink(path))})"
    return f"cannot be read ({exc.strerror})"


def _report(problems, skip_unreadable):
    """The `skipped` list of a listing; without `skip_unreadable` the first problem raises
    UnreadableFile."""
    seen = set()
    problems = [p for p in problems if not (p[0] in seen or seen.add(p[0]))]  # each path once
    if problems and not skip_unreadable:
        raise UnreadableFile(problems[0][1])
    return problems


def _classes(walk, directory):
    """Walk the class folders of `directory` -> (class names, [(label, folder, files)]): the
    sorted sub-folders that are not hidden, links included; a class folder that is the same real
    folder as one walked before is a problem (it keeps its name, with no images)."""
    top = os.stat(directory)
    ancestors = ((top.st_dev, top.st_ino),)
    walk.walked.setdefault(ancestors[0], directory)
    names, walked = [], []
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        raise UnreadableFile(
            f"{display_path(directory)}: cannot be listed ({exc.strerror})"
        ) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = os.path.join(directory, entry.name)
        try:
            is_link = entry.is_symlink()
            st = os.stat(path)
        except OSError as exc:
            if is_link or _is_image_name(entry.name):
                walk.problem(path, _stat_failure(path, exc))
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        label = len(names)
        names.append(entry.name)
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            walk.problem(path, f"a link loop (back to {display_path(directory)}); not walked")
        elif key in walk.walked:
            walk.problem(
                path,
                f"the same folder as {display_path(walk.walked[key])}, listed already; class "
                f"'{display_path(entry.name)}' gets no images",
            )
        else:
            walk.walked[key] = path
            for folder, files in walk.tree(path, ancestors):
                walked.append((label, folder, files))
    return tuple(names), walked


def list_folder(directory, skip_unreadable=False):
    """Image files of a folder of class sub-folders, as `keras.utils.image_dataset_from_directory`
    lists them -> `ImageListing(paths, int64 labels, class names, skipped)`.

    Classes are the sorted sub-folders (not hidden), links to folders included; in each, its
    regular files of any depth with an image extension (case-insensitive), folders in sorted
    order, files sorted within a folder. Files directly in `directory` are not listed.

    Links to files and folders are followed, wherever they point. Each real folder (device
    and inode) is walked once: a link back into a folder on its own path (a loop) or to a folder
    already walked is not walked again, and it is reported, as is a class folder that is the same
    real folder as one listed before (it keeps its class id, with no images). A real (not linked)
    folder that a link reached first is not walked again either, in silence: its files are listed
    once, under the link's path. A file with an image name that is not a regular file (a FIFO, a
    socket, a device, a broken link, a link loop) is reported too.

    Reported means: refused (`gpq_keras.files.UnreadableFile` naming the path and why), or with
    `skip_unreadable` left out and listed in `skipped` as (path, reason). A class folder is never
    dropped in silence.
    """
    directory = os.fspath(directory)
    walk = _Walk()
    class_names, paths, labels = _class_files(walk, directory)
    skipped = _report(walk.problems, skip_unreadable)
    return ImageListing(paths, np.asarray(labels, np.int64), class_names, skipped)


def _class_files(walk, directory):
    """(class names, the image files of the class folders in order, their class ids) of
    `directory`, walked by `walk` (`_classes`)."""
    class_names, walked = _classes(walk, directory)
    paths = [path for _, _, files in walked for path in files]
    labels = [label for label, _, files in walked for _ in files]
    return class_names, paths, labels


def _loose(walk, directory):
    """The image files of `directory` outside its class folders: its own files and those of its
    hidden sub-folders (walked by the same rule)."""
    found = []
    files, folders = walk.entries(directory)
    found.extend(files)
    top = os.stat(directory)
    ancestors = ((top.st_dev, top.st_ino),)
    for path, st, is_link in folders:
        if os.path.basename(path).startswith(".") and walk.enter(path, st, is_link, ancestors):
            found.extend(p for _, paths in walk.tree(path, ancestors) for p in paths)
    return found


def _glob_parts_match(parts, pattern):
    """Whether path components `parts` match glob components `pattern` (`**` any number of
    components; wildcards do not match a hidden name unless the pattern's component starts with a
    dot, as `glob` does)."""

    @functools.cache
    def match(i, j):
        if j == len(pattern):
            return i == len(parts)
        if pattern[j] == "**":
            return match(i, j + 1) or (
                i < len(parts) and not parts[i].startswith(".") and match(i + 1, j)
            )
        if i == len(parts):
            return False
        if (
            parts[i].startswith(".")
            and glob.has_magic(pattern[j])
            and not pattern[j].startswith(".")
        ):
            return False
        return fnmatch.fnmatchcase(parts[i], pattern[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _recursive_glob(walk, spec):
    """Files matching a pattern with `**`, found by walking its fixed leading folder by the link
    rule (Python's glob follows a link loop 40 levels deep, and two loops exponentially) ->
    (sorted image paths, the problems that match the pattern)."""
    parts = spec.split(os.sep) if os.sep in spec else spec.split("/")
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    base = os.sep.join(fixed) if fixed else os.curdir
    if fixed == [""]:
        base = os.sep
    pattern = parts[len(fixed) :]
    if not os.path.isdir(base):
        return [], []
    walk.walked[_key(base)] = base
    found = [p for _, paths in walk.tree(base) for p in paths]
    if not fixed:  # "**/*.jpg": paths as glob gives them, without "./"
        found = [os.path.relpath(p) if p.startswith(os.curdir + os.sep) else p for p in found]
        walk.problems = [(os.path.normpath(p), why) for p, why in walk.problems]

    def matches(path):
        rel = os.path.relpath(path, base) if fixed else os.path.normpath(path)
        return _glob_parts_match(tuple(rel.split(os.sep)), tuple(pattern))

    problems = [(p, why) for p, why in walk.problems if matches(p) or not _is_image_name(p)]
    return sorted(p for p in found if matches(p)), problems


def list_images(spec, skip_unreadable=False):
    """Image files to index: a folder (any depth) or a glob pattern -> `ImageListing(paths, int64
    labels or None, class names or None, skipped)`, in a stable order.

    A folder whose images all lie in class sub-folders gives their classes as `list_folder` does
    (the sub-folder names, links included); otherwise (images directly in the folder or in its
    hidden sub-folders too), and for a glob, the images have no labels and are sorted by path.

    Links to files and folders are followed, wherever they point. Each real folder (device
    and inode) is walked once: a link back into a folder on its own path (a loop) or to a folder
    already walked is not walked again, and it is reported, as is a class folder that is the same
    real folder as one listed before. A real (not linked) folder that a link reached first is not
    walked again either, in silence: its files are listed once, under the link's path. Only
    regular files are listed: another file with an image name (a FIFO, a socket, a device, a
    broken link, a link loop) is reported. A pattern with `**` is matched by the same walk.

    Reported means: refused (`gpq_keras.files.UnreadableFile` naming the path and why), or with
    `skip_unreadable` left out and listed in `skipped` as (path, reason). Raises
    FileNotFoundError when nothing matches and ValueError when no image file is found.
    """
    spec = os.fspath(spec)
    walk = _Walk()
    if os.path.isdir(spec):
        class_names, paths, labels = _class_files(walk, spec)
        loose = _loose(walk, spec)
        skipped = _report(walk.problems, skip_unreadable)
        if loose or not paths:  # loose images too: no classes
            paths, labels, class_names = sorted(paths + loose), None, None
        else:
            labels = np.asarray(labels, np.int64)
    else:
        if "**" in spec:
            paths, problems = _recursive_glob(walk, spec)
            matched = bool(paths or problems)
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            matched = bool(matches)
            paths, problems = [], []
            for path in matches:
                if not _is_image_name(path):
                    continue
                try:
                    st = os.stat(path)
                except OSError as exc:
                    problems.append((path, f"{display_path(path)}: {_stat_failure(path, exc)}"))
                    continue
                if stat.S_ISREG(st.st_mode):
                    paths.append(path)
                elif not stat.S_ISDIR(st.st_mode):
                    why = f"{file_kind(st.st_mode)}, not a regular file"
                    problems.append((path, f"{display_path(path)}: {why}"))
        if not matched:
            raise FileNotFoundError(f"no file or folder matches {display_path(spec)}")
        skipped = _report(problems, skip_unreadable)
        labels = class_names = None
    if not paths and not skipped:
        raise ValueError(f"{display_path(spec)}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageListing(paths, labels, class_names, skipped)


NO_CLASS = -1  # the label of an image without a class beside images with classes


def merge_listings(listings):
    """One `ImageListing` of several (`--images A --images B`), in order: classes by name across
    them (ids in order of first appearance); the images of a listing without classes (an unlabeled
    pool) get `NO_CLASS` (-1) beside those with classes, and when no listing has classes there are
    no labels."""
    listings = list(listings)
    if len(listings) == 1:
        return listings[0]
    paths = [path for listing in listings for path in listing.paths]
    skipped = [item for listing in listings for item in listing.skipped]
    if all(listing.labels is None for listing in listings):
        return ImageListing(paths, None, None, skipped)
    names = []
    for listing in listings:
        names += [name for name in listing.class_names or () if name not in names]
    labels = []
    for listing in listings:
        if listing.labels is None:
            labels.append(np.full(len(listing.paths), NO_CLASS, np.int64))
        else:
            ids = np.array([names.index(n) for n in listing.class_names], np.int64)
            labels.append(ids[np.asarray(listing.labels, np.intp)])
    return ImageListing(paths, np.concatenate(labels), tuple(names), skipped)


def load_folder(
    directory,
    image_size=32,
    protocol=None,
    seed=0,
    query_every=10,
    labeled_per_class=None,
    query_per_class=None,
    unlabeled=None,
    fraction=0.75,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
):
    """A folder of class sub-folders (and optionally an unlabeled pool) -> a `Split` of
    `ImageFiles`, read at `image_size` when a batch is drawn: nothing is decoded here.

    Files and class ids as `keras.utils.image_dataset_from_directory` gives them (`list_folder`,
    whose docstring has the rule for links): class ids follow the sorted sub-folder names. Each
    file's header is checked (`gpq_keras.data.images.check_image_files`: a regular file, an image,
    not over `max_pixels`).

    The protocol (`gpq_keras.data.protocols`): by default "given", every labeled image trains
    as labeled except `query_per_class` per class held out as queries (and validation); "gpq"
    (or any `labeled_per_class`) the paper's scarcity: every `query_every`-th image is a query
    and `labeled_per_class` per class (default a tenth of the smallest class) are labeled, the
    rest unlabeled; "unseen" (the given parts, then `fraction` of the classes seen in training,
    the others searched) trains on some classes and retrieves the others.

    `unlabeled`: a folder (any depth) or a glob of images for the unlabeled stream (their
    sub-folders are not classes), or an npz of uint8 images of `image_size` (`load_unlabeled`);
    without it the labeled images feed that stream too.

    Raises FileNotFoundError for a missing folder, `gpq_keras.files.UnreadableFile` (a
    FileFormatError) naming the file for one that is not a regular file, is over `max_pixels` or
    is not an image, ValueError (one line) for a folder without images or too small for the
    protocol. With `skip_unreadable` such files are left out instead, and listed as (path,
    reason) in the split's `skipped`.
    """
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.images import check_image_files
    from gpq_keras.data.protocols import Pool

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder not found: {display_path(directory)}")
    for side in image_hw(image_size):
        check_count("image_size", side)
    paths, labels, class_names, skipped = list_folder(directory, skip_unreadable)
    if not paths:
        raise ValueError(
            f"{display_path(directory)}: no images in class sub-folders (image files: "
            f"{', '.join(IMAGE_EXTENSIONS)}; found classes {list(class_names)})"
        )
    kept, bad = check_image_files(paths, max_pixels, skip_unreadable)
    skipped = skipped + bad
    if not len(kept):
        raise ValueError(
            f"{display_path(directory)}: none of its {len(paths)} image files could be read"
        )
    name = os.path.basename(os.path.normpath(directory))
    files = ImageFiles([paths[i] for i in kept], image_size, max_pixels=max_pixels)
    pool = Pool(files, labels[kept], len(class_names), class_names, name)
    stream = None
    if unlabeled is not None:
        stream = functools.partial(
            load_unlabeled, unlabeled, image_size, max_pixels, skip_unreadable
        )
    split, pool_skipped = split_pool(
        pool,
        protocol,
        seed,
        query_every=query_every,
        labeled_per_class=labeled_per_class,
        query_per_class=query_per_class,
        fraction=fraction,
        unlabeled=stream,
    )
    split.class_names = class_names
    split.skipped = skipped + pool_skipped
    return split


def load_unlabeled(
    spec,
    image_size=32,
    max_pixels=DEFAULT_MAX_PIXELS,
    skip_unreadable=False,
    input_shape=None,
):
    """The unlabeled pool `--unlabeled` names -> (inputs, skipped): a folder (any depth;
    sub-folders are not classes) or a glob -> (`ImageFiles` read at `image_size`, skipped), headers
    checked as `load_folder` checks them; or an `.npz` (`FILE.npz` or `npz:FILE`) -> (its
    `x_unlabeled`, else its `x_db`, []), images or embeddings (`load_unlabeled_npz`).

    `input_shape` is the shape of one input of the labeled data, (D,) for embeddings or (H, W, 3)
    (default: images of `image_size`); the unlabeled inputs must be of its kind and size. Raises
    FileNotFoundError when nothing matches, ValueError "--unlabeled SPEC: no images" for a pool
    without images (none left with `skip_unreadable`), and one line when image files are given
    for embeddings."""
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.images import check_image_files

    spec = os.fspath(spec)
    if input_shape is None:
        input_shape = (*image_hw(image_size), 3)
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) == 3:
        image_size = input_shape[:2]
    npz = unlabeled_npz_path(spec)
    if npz is not None:
        return load_unlabeled_npz(npz, input_shape), []
    if len(input_shape) == 1:
        raise ValueError(
            f"--unlabeled {display_path(spec)}: the data are embeddings (N, {input_shape[0]}); "
            "their unlabeled set is an .npz of embeddings (x_unlabeled or x_db), not image files"
        )
    spec = os.fspath(spec)
    try:
        listing = list_images(spec, skip_unreadable)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--unlabeled: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise ValueError(f"--unlabeled {display_path(spec)}: no images ({exc})") from None
    kept, bad = check_image_files(listing.paths, max_pixels, skip_unreadable)
    if not len(kept):
        raise ValueError(
            f"--unlabeled {display_path(spec)}: no images could be read "
            f"({len(listing.paths)} image files, {len(listing.skipped) + len(bad)} unreadable)"
        )
    files = ImageFiles([listing.paths[i] for i in kept], image_size, max_pixels=max_pixels)
    return files, list(listing.skipped) + bad


def unlabeled_npz_path(spec):
    """The npz file an `--unlabeled` value names ("npz:FILE", or a path ending in .npz that is no
    glob or folder), or None for a folder or glob of images."""
    spec = os.fspath(spec)
    if spec.startswith("npz:"):
        return os.path.expanduser(spec[len("npz:") :])
    if spec.lower().endswith(".npz") and not glob.has_magic(spec) and not os.path.isdir(spec):
        return spec
    return None


def load_unlabeled_npz(path, input_shape=None):
    """The unlabeled inputs of an npz: its `x_unlabeled`, else its `x_db` (labels, if any, are
    ignored) -> images uint8 (N, H, W, 3) or embeddings float32 (N, D) (`check_inputs`), of the
    kind and size `input_shape` (one input's shape, (D,) or (H, W, 3)) when given.

    Raises FileNotFoundError for a missing file and FileFormatError (one line naming the file and
    the array) for an npz without those arrays, inputs of another kind or size, or none."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--unlabeled: npz file not found: {display_path(path)}")
    keys = read_npz_keys(path)
    key = next((k for k in ("x_unlabeled", "x_db") if k in keys), None)
    if key is None:
        raise FileFormatError(
            f"--unlabeled {display_path(path)}: holds neither 'x_unlabeled' nor 'x_db' (has "
            f"{sorted(keys)})"
        )
    where = f"--unlabeled {display_path(path)}: '{key}'"
    inputs = _refuse(check_inputs, read_npz(path, "npz file", keys=(key,))[key], where)
    if not len(inputs):
        raise FileFormatError(
            f"{where} is empty {inputs.shape}; the unlabeled set needs at least one row"
        )
    if input_shape is not None:
        input_shape = tuple(int(v) for v in input_shape)
        vectors = len(input_shape) == 1
        if is_vectors(inputs) != vectors:
            why = "they must be of one kind"
        elif inputs.shape[1:] != input_shape:
            why = "the widths must match" if vectors else "the sizes must match"
        else:
            return inputs
        wanted = f"{'embeddings' if vectors else 'images'} (N, {', '.join(map(str, input_shape))})"
        raise FileFormatError(
            f"{where} are {describe_inputs(inputs)} but the data are {wanted}; {why}"
        )
    return inputs
