"""Data sources and input pipelines.

`load_data(spec)` turns a data spec of the CLI into a `Split`:

| spec                         | source                                                            |
|------------------------------|-------------------------------------------------------------------|
| `digits`                     | 1,797 handwritten digits packaged with gpq_keras (the default)    |
| `cifar10:DIR`                | the original release's folder of python batches                   |
| `tfds:cifar10[:DATA_DIR]`    | TensorFlow Datasets, offline from a manually placed archive:      |
|                              | DATA_DIR/downloads/manual/cifar-10-binary.tar.gz                  |
| `nuswide:LIST_DIR:IMAGE_ROOT`| HashNet list files (database.txt, test.txt, train.txt) + images   |
| `npz:FILE`                   | x_query, y_query, x_db, y_db (+ x_labeled, y_labeled, x_unlabeled)|
| `folder:DIR`                 | class sub-folders of images, split like the paper                 |

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
from gpq_keras.data.split import Split, check_images, protocol_split

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
    "eval_input",
    "has_tensorflow",
    "load_data",
    "protocol_split",
    "resolve_pipeline",
    "spec_paths",
    "train_input",
]
__all__ = sorted(__all__ + list(_LAZY))
PIPELINES = ("auto", "tf.data", "numpy")


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


# options of the sources that decode image files (`gpq_keras.data.images.read_images`)
FILE_OPTIONS = ("max_pixels", "skip_unreadable")

SPEC_FORMS = (
    "digits",
    "cifar10:DIR",
    "tfds:cifar10[:DATA_DIR]",
    "nuswide:LIST_DIR:IMAGE_ROOT",
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
    """`predict`'s input: un-augmented float32 batches (B, H, W, C) of images (N, H, W, C), in
    order, from `pipeline` "tf.data" (`eval_dataset`), "numpy" (`eval_pydataset`, a
    `keras.utils.PyDataset`) or "auto" (as `train_input`). Pixels, or with `normalized=True` uint8
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


def load_data(spec, **options):
    """Load the `Split` a data spec names (see the module docstring); `options` go to the loader.

    Options by source: cifar10 `similarity`, `query_every`, `labeled_per_class`; tfds `manual_dir`,
    `download` (default False: offline), `similarity`, `query_every`, `labeled_per_class`; nuswide
    `image_size`; npz `name`; folder `image_size`, `query_every`, `labeled_per_class`; digits
    `query_every`, `labeled_per_class`. The image file options `max_pixels` (default 89,478,485)
    and `skip_unreadable` (default False) go to the sources that decode image files (folder,
    nuswide: their split's `skipped` lists what was left out) and are ignored by the others.

    Raises ValueError naming the spec and the accepted forms for a malformed spec, FileNotFoundError
    naming the path for missing files, `gpq_keras.files.FileFormatError` (a ValueError) naming the
    file and the key, line or image at fault for a damaged or malformed one, and ValueError (one
    line) for data the protocol cannot use (too few images, bad labels).
    """
    kind, paths = _parse_spec(spec)
    file_options = {k: options.pop(k) for k in FILE_OPTIONS if k in options}
    if kind in ("nuswide", "folder"):
        options.update(file_options)
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
    from gpq_keras.data import user

    if kind == "npz":
        return user.load_npz(_existing(paths[0], "npz file"), **options)
    return user.load_folder(_existing(paths[0], "image folder"), **options)


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
    if kind not in ("cifar10", "tfds", "nuswide", "npz", "folder"):
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
    return kind, [os.path.expanduser(rest)]


def spec_paths(spec):
    """The files and folders a data spec reads, e.g. ["mydata.npz"] for "npz:mydata.npz" (none for
    digits)."""
    return _parse_spec(spec)[1]
