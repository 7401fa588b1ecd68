"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed."""

import contextlib
import glob
import json
import os
import tempfile

TEMPORARY_PREFIX = ".tmp-"


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
