"""The index a server answers from, swapped for the file's new contents when the file changes."""

import os
import sys
import threading

import numpy as np

from gpq_keras.files import display_path


class LiveIndex:
    """A `PQIndex` file kept loaded, reloaded when the file changes.

    ```python
    live = LiveIndex("photos.npz", model)
    index = live.current  # take it once per request: a reload never splits one
    live.check()  # reload if the file's mtime, size or inode changed -> True when swapped
    ```

    A reload reads the whole new file (`open_index`, checksum and model checked) and searches it
    once (what a search derives from the codes is made then) before one assignment swaps it in;
    requests under way finish on the index they took. A file that is missing or does not load
    leaves the served index as it was, and says why on stderr, once.

    Args:
        path: the `.npz` index file (a faiss file is refused: its results name no files).
        model: the GPQ model the index was built with (`PQIndex.check_model`).
    """

    def __init__(self, path, model):
        self.path, self.model = os.fspath(path), model
        self.reloads = 0  # swaps since the first load
        self._lock = threading.Lock()  # one load at a time
        self._stamp = self._file_stamp()
        self._failed = None  # the stamp of the file that last failed to load, said once
        self.current = self._load()

    def _file_stamp(self):
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev

    def _load(self):
        from gpq_keras.retrieval import PQIndex, open_index

        index = open_index(self.path, self.model)
        if not isinstance(index, PQIndex):
            raise ValueError(
                f"{display_path(self.path)} is a faiss file; gpq serve needs a PQIndex .npz "
                "(gpq index build without --faiss), whose items name their files"
            )
        if index.ntotal:  # what a search derives from the codes (fast-scan blocks), made now
            index.search(np.zeros((1, index.dim), np.float32), 1)
        return index

    def check(self, force=False):
        """Reload the file if it changed since the last load (`force`: in any case, as on SIGHUP)
        -> True when a new index was swapped in."""
        with self._lock:
            stamp = self._file_stamp()
            if stamp is None or (stamp == self._stamp and not force):
                return False
            try:
                index = self._load()
            except (OSError, ValueError) as exc:  # FileFormatError is a ValueError
                if stamp != self._failed:
                    message = " ".join(str(exc).split()) or type(exc).__name__
                    print(f"gpq serve: kept the served index: {message}", file=sys.stderr)
                self._failed = stamp
                return False
            self._stamp, self._failed = stamp, None
            self.current = index  # one reference assignment: atomic for the requests
            self.reloads += 1
        print(
            f"gpq serve: reloaded {display_path(self.path)}: {index.ntotal} items",
            file=sys.stderr,
            flush=True,
        )
        return True
