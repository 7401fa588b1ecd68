"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed."""

import contextlib
import glob
import json
import math
import os
import tempfile
import zipfile
import zlib

TEMPORARY_PREFIX = ".tmp-"


class FileFormatError(ValueError):
    """A file exists but is not what its reader expects (damaged, truncated, wrong keys, shapes or values).

    Every reader of gpq_keras raises this (or a subclass) for bad content, with the file and the key, line
    or image at fault in the message, and FileNotFoundError for a missing file.
    """


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds, else remove it.

    `suffix` (default: `path`'s extension) is the temporary name's ending, for writers that pick the
    format from it (Keras' `.keras`, matplotlib, `np.savez` adding `.npz`). The folder is created. The
    file gets the usual permissions (0666 less the umask), not the 0600 of a temporary file.

    ```python
    with atomic_path("out/codes.npz") as tmp:
        np.savez(tmp, codes=codes)
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX,
                                   suffix=os.path.splitext(path)[1] if suffix is None else suffix, dir=folder)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, data):
    """Write `data` as indented JSON to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def sweep_temporaries(folder):
    """Remove the temporary files a killed writer left in `folder` -> their paths."""
    stale = [p for p in glob.glob(os.path.join(glob.escape(os.fspath(folder)), TEMPORARY_PREFIX + "*"))
             if os.path.isfile(p) and not os.path.islink(p)]
    for path in stale:
        os.remove(path)
    return stale


def available_memory():
    """Bytes of memory available now (Linux/macOS), or None when the system does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def read_npz(path, what="npz file"):
    """All arrays of an `.npz`, read without pickle and checked first: {key: array}.

    Each array's `.npy` header is read before the array: object (pickled) arrays and arrays larger than the
    memory available are refused without allocating them. Anything damaged (not a zip, truncated, bad CRC or
    header) raises `FileFormatError` naming the file and the key; a missing file FileNotFoundError.
    """
    import numpy as np

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    memory = available_memory()
    key = None
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for name in archive.namelist():
                key = name[:-4] if name.endswith(".npy") else name
                with archive.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in ((1, 0), (2, 0)):
                        raise FileFormatError(f"{path}: key {key!r} has an unsupported .npy version {version}")
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(fh)
                    if dtype.hasobject:
                        raise FileFormatError(f"{path}: key {key!r} holds Python objects (pickle); refused")
                    size = math.prod(shape) * dtype.itemsize
                    if memory is not None and size > memory:
                        raise FileFormatError(f"{path}: key {key!r} claims {dtype} {shape}, {size / 2**30:.1f} GiB, "
                                              f"more than the {memory / 2**30:.1f} GiB of memory available")
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    arrays[key] = data[key]
            return arrays
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError, RuntimeError,
            MemoryError) as exc:
        where = f" (key {key!r})" if key is not None else ""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"{path}: not a readable .npz{where}: {type(exc).__name__}: {detail}") from None
