"""The user's own data: an `.npz` of ready splits, or a folder of class sub-folders with an
optional unlabeled pool.

```python
# x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled)
split = user.load_npz("mydata.npz")
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
from gpq_keras.data.split import Split, check_count, check_images, check_labels
from gpq_keras.files import (
    FileFormatError,
    UnreadableFile,
    atomic_path,
    display_path,
    file_kind,
    read_npz,
)

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
    sub-folders are not classes); without it the labeled images feed that stream too.

    Raises FileNotFoundError for a missing folder, `gpq_keras.files.UnreadableFile` (a
    FileFormatError) naming the file for one that is not a regular file, is over `max_pixels` or
    is not an image, ValueError (one line) for a folder without images or too small for the
    protocol. With `skip_unreadable` such files are left out instead, and listed as (path,
    reason) in the split's `skipped`.
    """
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.images import check_image_files
    from gpq_keras.data.protocols import Pool, apply_protocol, unseen_split

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
        counts = np.bincount(pool.labels, minlength=len(class_names))
        rest = counts[counts > 0] * (1 - 1 / check_count("query_every", query_every, name))
        labeled_per_class = max(1, int(rest.min() // 10))
    options = {"query_every": query_every, "labeled_per_class": labeled_per_class}
    if query_per_class is not None:
        options["query_per_class"] = query_per_class
    # unseen: the given parts, then only the seen classes train and the unseen are searched
    split = apply_protocol(pool, base if protocol == "unseen" else protocol, seed, **options)
    if unlabeled is not None:
        pool_files, pool_skipped = load_unlabeled(
            unlabeled, image_size, max_pixels, skip_unreadable
        )
        split.x_unlabeled = pool_files
        split.index.pop("unlabeled", None)
        skipped += pool_skipped
    if protocol == "unseen":
        split.num_classes = len(class_names)
        split = unseen_split(split, fraction, seed, keep_unlabeled=unlabeled is not None)
    split.name = name
    split.num_classes = len(class_names)
    split.class_names = class_names
    split.skipped = skipped
    return split


def load_unlabeled(spec, image_size=32, max_pixels=DEFAULT_MAX_PIXELS, skip_unreadable=False):
    """The unlabeled pool `--unlabeled` names: a folder (any depth; sub-folders are not classes)
    or a glob -> (`ImageFiles`, skipped). Headers checked as `load_folder` checks them.

    Raises FileNotFoundError when nothing matches, ValueError "--unlabeled SPEC: no images" for a
    pool without images (none left with `skip_unreadable`)."""
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.images import check_image_files

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
