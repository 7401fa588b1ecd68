"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds, else remove it.

    `suffix` (default: `path`'s extension) is the temporary name's ending, for writers that pick the
    format from it (Keras' `.keras`, matplotlib, `np.savez` adding `.npz`). The folder is created.

    ```python
    with atomic_path("out/codes.npz") as tmp:
        np.savez(tmp, codes=codes)
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] if suffix is None else suffix,
                                   dir=folder)
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
