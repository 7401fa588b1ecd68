"""Data sources and input pipelines.

`load_data(spec)` turns a data spec of the CLI into a `Split`:

| spec                         | source                                                            |
|------------------------------|-------------------------------------------------------------------|
| `digits`                     | 1,797 handwritten digits packaged with gpq_keras (the default)    |
| `cifar10:DIR`                | the original release's folder of python batches                   |
| `tfds:cifar10[:DATA_DIR]`    | TensorFlow Datasets, offline from a manually placed archive:      |
|                              | DATA_DIR/downloads/manual/cifar-10-binary.tar.gz                  |
| `nuswide:LIST_DIR:IMAGE_ROOT`| `list:` with 21 labels (HashNet's NUS-WIDE lists)                 |
| `list:LIST_DIR[:IMAGE_ROOT]` | train.txt, database.txt, test.txt (+ unlabeled.txt): path + 0/1s  |
| `npz:FILE`                   | x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled)|
|                              | or, without x_query, one labeled pool x_db, y_db (`gpq embed`'s)  |
| `folder:DIR`                 | class sub-folders of images; every labeled image trains           |

File-based sources (`folder`, `list`, `nuswide`) give `ImageFiles` parts, decoded at the size
asked when a batch is drawn. `--protocol` (`gpq_keras.data.protocols`) chooses the parts. An
`npz:` may hold embeddings, float (N, D), instead of images: `Split.takes_vectors`; the pipelines
give them as float32 batches, never augmented. A folder and an npz without x_query are one pool
of labeled inputs the protocols split (`is_pool_spec`).

The input pipelines load on first use, so importing this package, its specs and the NumPy loaders
does not import TensorFlow or Keras: tf.data (`tf_pipeline`: `train_dataset`, `eval_dataset`,
`normalize`) and, for Keras backends without TensorFlow, NumPy `keras.utils.PyDataset`s
(`numpy_pipeline`: `train_pydataset`, `eval_pydataset`). `train_input` and `eval_input` pick one.
The pixel contract both follow (channel statistics, padding) is the model's:
`gpq_keras.image_converter`.
"""

import functools
import os

from gpq_keras import lazy_exports
from gpq_keras.data.split import Split, check_images, check_inputs, protocol_split

_LAZY = {
    **{
        name: "gpq_keras.data.tf_pipeline"
        for name in ("normalize", "train_dataset", "eval_dataset")
    },
    **{
        name: "gpq_keras.data.numpy_pipeline"
        for name in ("train_pydataset", "eval_pydataset", "ArrayBatches", "TwoStreamBatches")
    },
    "denormalize": "gpq_keras.image_converter",
}
__all__ = [
    "FILE_OPTIONS",
    "PIPELINES",
    "SPEC_FORMS",
    "Split",
    "check_images",
    "check_inputs",
    "eval_input",
    "has_tensorflow",
    "is_pool_spec",
    "load_data",
    "protocol_split",
    "resolve_pipeline",
    "spec_kind",
    "spec_paths",
    "train_input",
]
__all__ = sorted(__all__ + list(_LAZY))
PIPELINES = ("auto", "tf.data", "numpy")


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


# options of the sources that decode image files (`gpq_keras.data.images.read_images`)
FILE_OPTIONS = ("max_pixels", "skip_unreadable")
FILE_SOURCES = ("folder", "list", "nuswide")  # their parts are `ImageFiles`, streamed
POOL_SOURCES = ("digits", "cifar10", "tfds")  # one pool of labeled images that protocols split

SPEC_FORMS = (
    "digits",
    "cifar10:DIR",
    "tfds:cifar10[:DATA_DIR]",
    "nuswide:LIST_DIR:IMAGE_ROOT",
    "list:LIST_DIR[:IMAGE_ROOT]",
    "npz:FILE",
    "folder:DIR",
)


@functools.cache
def has_tensorflow():
    """Whether TensorFlow can be imported (it is imported, once, to find out)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_pipeline(pipeline="auto"):
    """The input pipeline a choice of `PIPELINES` means: "tf.data" or "numpy" ("auto": tf.data
    whenever TensorFlow can be imported)."""
    if pipeline not in PIPELINES:
        raise ValueError(
            f"Unknown input pipeline {pipeline!r}; expected one of {', '.join(PIPELINES)}"
        )
    if pipeline == "auto":
        return "tf.data" if has_tensorflow() else "numpy"
    return pipeline


def train_input(split, pipeline="auto", **options):
    """`GPQ.fit`'s two-stream input -> (dataset, steps_per_epoch): `pipeline` "tf.data"
    (`train_dataset`), "numpy" (`train_pydataset`, a `keras.utils.PyDataset`) or "auto": tf.data
    whenever TensorFlow can be imported, so that every backend trains on the same batches, else
    NumPy. `options` go to the pipeline."""
    if resolve_pipeline(pipeline) == "tf.data":
        from gpq_keras.data.tf_pipeline import train_dataset

        return train_dataset(split, **options)
    from gpq_keras.data.numpy_pipeline import train_pydataset

    return train_pydataset(split, **options)


def eval_input(images, pipeline="auto", batch_size=500, normalized=False):
    """`predict`'s input: un-augmented float32 batches (B, H, W, C) of images (N, H, W, C), or
    (B, D) of embeddings (N, D) (`normalized` ignored), in order, from `pipeline` "tf.data"
    (`eval_dataset`), "numpy" (`eval_pydataset`, a `keras.utils.PyDataset`) or "auto" (as
    `train_input`). Pixels, or with `normalized=True` uint8
    images normalised and float images taken as normalised already (models saved with
    `GPQ(normalize_pixels=False)`)."""
    if resolve_pipeline(pipeline) == "tf.data":
        from gpq_keras.data.tf_pipeline import eval_dataset

        return eval_dataset(images, batch_size, normalized=normalized)
    from gpq_keras.data.numpy_pipeline import eval_pydataset

    return eval_pydataset(images, batch_size, normalized=normalized)


def _bad_spec(spec, why):
    return ValueError(f"bad data spec {spec!r}: {why}; accepted: {', '.join(SPEC_FORMS)}")


def _existing(path, what):
    from gpq_keras.files import display_path

    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {display_path(path)}")
    return path


def load_data(spec, protocol=None, seed=0, unlabeled=None, **options):
    """Load the `Split` a data spec names (see the module docstring); `options` go to the loader.

    `protocol` (`gpq_keras.data.protocols.PROTOCOLS`, e.g. "unseen:0.75"; None: the source's
    default, "gpq" for digits, cifar10 and tfds, "given" for the others) and its `seed` choose the
    parts. `unlabeled` (a folder or glob of images, or an npz: `FILE.npz` or `npz:FILE`, whose
    `x_unlabeled` or else `x_db` are the unlabeled inputs, images or embeddings of the data's kind
    and size) is the unlabeled stream of a `folder:`, `list:` or `nuswide:` spec, or of an `npz:`
    without `x_unlabeled`; a spec with its own unlabeled set refuses it. Embeddings take only an
    npz.

    An `npz:` without `x_query` (`x_db`, `y_db` (+ `class_names`), as `gpq embed` writes) is one
    labeled pool split by the protocols as a folder is (`user.load_npz`; default "given": per class
    `query_per_class` queries, every other input labeled and the database); one without labels
    is refused (it goes to `unlabeled`).

    Options by source: cifar10 `similarity`, `query_every`, `labeled_per_class`; tfds `manual_dir`,
    `download` (default False: offline), `similarity`, `query_every`, `labeled_per_class`; nuswide
    and list `image_size`; npz `name` (a pool npz also `query_every`, `labeled_per_class`,
    `query_per_class`); folder `image_size`, `query_every`, `labeled_per_class`,
    `query_per_class`; digits `query_every`, `labeled_per_class`. The image file options
    `max_pixels` (default 89,478,485) and `skip_unreadable` (default False) go to the sources that
    read image files (folder, list, nuswide: their split's `skipped` lists what was left out) and
    are ignored by the others. File-based sources give `ImageFiles` parts, decoded when a batch is
    drawn.

    Raises ValueError naming the spec and the accepted forms for a malformed spec, FileNotFoundError
    naming the path for missing files, `gpq_keras.files.FileFormatError` (a ValueError) naming the
    file and the key, line or image at fault for a damaged or malformed one, and ValueError (one
    line) for data the protocol cannot use (too few images, bad labels).
    """
    from gpq_keras.data.protocols import parse_protocol

    kind, paths = _parse_spec(spec)
    name, fraction = parse_protocol(protocol) if protocol is not None else (None, None)
    file_options = {k: options.pop(k) for k in FILE_OPTIONS if k in options}
    if kind in FILE_SOURCES:
        options.update(file_options)
    pool_npz = kind == "npz" and _npz_layout(paths[0]) == "pool"
    if unlabeled is not None:
        _check_unlabeled_allowed(spec, kind, paths)
    if (
        options.get("labeled_per_class") is not None
        and kind not in (*POOL_SOURCES, "folder")
        and not pool_npz
    ):
        raise ValueError(
            f"--labeled-per-class: {kind}: brings its own labeled set ({spec!r}); it simulates "
            "label scarcity on one pool of labeled images (digits, cifar10:, tfds:, folder:, npz: "
            "without x_query)"
        )
    if kind == "folder":
        from gpq_keras.data import user

        if fraction is not None:
            options["fraction"] = fraction
        split = user.load_folder(
            _existing(paths[0], "image folder"),
            protocol=name,
            seed=seed,
            unlabeled=unlabeled,
            **options,
        )
        return _named(split, name, fraction, seed)
    if pool_npz:
        from gpq_keras.data import user

        if fraction is not None:
            options["fraction"] = fraction
        split = user.load_npz(
            _existing(paths[0], "npz file"),
            protocol=name,
            seed=seed,
            unlabeled=unlabeled,
            **file_options,
            **options,
        )
        return _named(split, name, fraction, seed)
    split = _load_source(kind, paths, name, seed, options)
    own_unlabeled = split.x_unlabeled is not split.x_db  # unlabeled.txt, x_unlabeled
    if unlabeled is not None:
        from gpq_keras.data.user import load_unlabeled

        files, skipped = load_unlabeled(unlabeled, input_shape=split.x_db.shape[1:], **file_options)
        split.x_unlabeled = files
        split.index.pop("unlabeled", None)
        split.skipped = list(split.skipped) + skipped
    if name == "unseen":
        from gpq_keras.data.protocols import unseen_split

        split = unseen_split(
            split,
            0.75 if fraction is None else fraction,
            seed=seed,
            keep_unlabeled=unlabeled is not None or own_unlabeled,
        )
    return _named(split, name, fraction, seed)


def _npz_layout(path):
    """`user.npz_layout` of an npz spec's file, or None when it is not a file (refused later)."""
    if not os.path.isfile(os.path.expanduser(path)):
        return None
    from gpq_keras.data.user import npz_layout

    return npz_layout(os.path.expanduser(path))


def is_pool_spec(spec):
    """Whether data spec `spec` is one pool of labeled inputs split as a folder is split:
    `folder:` and an `npz:` without `x_query` (`gpq embed`'s output). Their given protocol holds
    `query_per_class` inputs per class out as queries, which are the validation inputs of
    `gpq train`. A malformed spec raises the ValueError of `load_data`; a missing npz is False,
    an unreadable one FileFormatError."""
    kind, paths = _parse_spec(spec)
    return kind == "folder" or (kind == "npz" and _npz_layout(paths[0]) == "pool")


def _named(split, name, fraction, seed):
    """`split` with the protocol it was made by ("unseen:0.5" with its fraction) and its seed."""
    if name is not None:
        split.protocol = name if fraction is None else f"{name}:{fraction:g}"
        split.seed = seed
    if split.seed is None:
        split.seed = seed
    return split


def _load_source(kind, paths, protocol, seed, options):
    """The split of a source that is not a folder, by its protocol: a pool source (digits,
    cifar10, tfds) is split by `protocol` (gpq by default; unseen is applied later, on the gpq
    split), the others keep their own parts ("given")."""
    if protocol not in (None, "given", "unseen") and kind not in POOL_SOURCES:
        raise ValueError(
            f"--protocol {protocol} splits one pool of labeled images (digits, cifar10:, "
            f"tfds:, folder:, npz: without x_query); {kind}: brings its own parts (use given or "
            "unseen)"
        )
    if protocol not in (None, "gpq", "unseen") and kind in POOL_SOURCES:  # given, cifar10-1/2
        from gpq_keras.data.protocols import apply_protocol

        pool = _read_pool(kind, paths, options)
        return apply_protocol(pool, protocol, seed=seed, **options)
    if kind == "digits":
        from gpq_keras.data import digits

        return digits.load_split(**options)
    if kind == "cifar10":
        from gpq_keras.data import cifar10

        return cifar10.load_split(_existing(paths[0], "CIFAR-10 folder"), **options)
    if kind == "tfds":
        from gpq_keras.data import cifar10

        return cifar10.load_split(from_tfds=True, data_dir=paths[0] if paths else None, **options)
    if kind == "nuswide":
        from gpq_keras.data import nuswide

        return nuswide.load_split(
            _existing(paths[0], "NUS-WIDE list folder"),
            _existing(paths[1], "NUS-WIDE image folder"),
            **options,
        )
    if kind == "list":
        from gpq_keras.data import lists

        list_dir = _existing(paths[0], "list folder")
        root = _existing(paths[1], "image folder") if len(paths) > 1 else None
        return lists.load_split(list_dir, root, **options)
    from gpq_keras.data import user

    return user.load_npz(_existing(paths[0], "npz file"), **options)


def _read_pool(kind, paths, options):
    """The `Pool` of a pool source, its reading options taken out of `options`."""
    if kind == "digits":
        from gpq_keras.data import digits

        return digits.load_pool()
    from gpq_keras.data import cifar10

    reading = {k: options.pop(k) for k in ("manual_dir", "download") if k in options}
    options.pop("similarity", None)
    if kind == "cifar10":
        return cifar10.read_pool(_existing(paths[0], "CIFAR-10 folder"))
    return cifar10.read_pool(from_tfds=True, data_dir=paths[0] if paths else None, **reading)


def _check_unlabeled_allowed(spec, kind, paths):
    """Refuse `unlabeled` for a spec that carries its own unlabeled set."""
    own = None
    if kind in POOL_SOURCES:
        own = "its database"
    elif kind == "npz":
        from gpq_keras.files import read_npz_keys

        if "x_unlabeled" in read_npz_keys(_existing(paths[0], "npz file")):
            own = "'x_unlabeled'"
    elif kind in ("list", "nuswide"):
        from gpq_keras.data import lists

        if lists.has_unlabeled_list(_existing(paths[0], "list folder")):
            own = lists.UNLABELED_FILE
    if own is not None:
        raise ValueError(
            f"--unlabeled: data spec {spec!r} carries its own unlabeled set ({own}); give "
            "--unlabeled with folder:, list: without unlabeled.txt, nuswide: or an npz: without "
            "x_unlabeled"
        )


def _parse_spec(spec):
    """(source kind, [paths it reads]) of a data spec; a ValueError naming the accepted forms
    otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(spec, "empty")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "digits":
        if rest:
            raise _bad_spec(spec, "digits takes no path")
        return kind, []
    if kind not in ("cifar10", "tfds", "nuswide", "npz", "folder", "list"):
        raise _bad_spec(spec, f"unknown source {kind!r}")
    if not rest:
        raise _bad_spec(spec, f"{kind} needs a path")
    if kind == "tfds":
        name, _, data_dir = rest.partition(":")
        if name != "cifar10":
            raise _bad_spec(spec, f"only tfds:cifar10 is supported, not tfds:{name}")
        return kind, [os.path.expanduser(data_dir)] if data_dir else []
    if kind == "nuswide":
        list_dir, sep, image_root = rest.partition(":")
        if not sep or not list_dir or not image_root:
            raise _bad_spec(spec, "nuswide needs LIST_DIR:IMAGE_ROOT")
        return kind, [os.path.expanduser(list_dir), os.path.expanduser(image_root)]
    if kind == "list":
        list_dir, sep, image_root = rest.partition(":")
        if not list_dir or (sep and not image_root):
            raise _bad_spec(spec, "list needs LIST_DIR or LIST_DIR:IMAGE_ROOT")
        return kind, [os.path.expanduser(p) for p in (list_dir, image_root) if p]
    return kind, [os.path.expanduser(rest)]


def spec_kind(spec):
    """The source a data spec names, e.g. "folder" for "folder:photos" (a ValueError naming the
    accepted forms for a malformed spec)."""
    return _parse_spec(spec)[0]


def spec_paths(spec):
    """The files and folders a data spec reads, e.g. ["mydata.npz"] for "npz:mydata.npz" (none for
    digits)."""
    return _parse_spec(spec)[1]
