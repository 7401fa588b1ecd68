"""Row-parallel NumPy work on a small shared thread pool (NumPy's sorts and gathers release the
GIL).

Retrieval ranks rows of distances with it and the metrics score rows of rankings with it.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpq_keras.config import check_positive_int

_MIN_ROWS_PER_THREAD = 8
_state = {"count": None, "pool": None, "lock": threading.Lock()}


def set_num_threads(count=None):
    """Threads that work on rows in parallel. None (default): the CPUs this process may use, at most
    8; 1: the calling thread only."""
    if count is not None:
        count = check_positive_int("count", count)
    with _state["lock"]:
        if _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)
        _state["count"], _state["pool"] = count, None


def get_num_threads():
    """The number of threads in use (see `set_num_threads`)."""
    if _state["count"] is not None:
        return _state["count"]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def map_rows(func, num_rows):
    """[func(rows) for slices `rows` that split range(num_rows)], run on the pool, in order."""
    parts = max(1, min(get_num_threads(), num_rows // _MIN_ROWS_PER_THREAD))
    bounds = np.linspace(0, num_rows, parts + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if parts == 1:
        return [func(slices[0])]
    with _state["lock"]:
        if _state["pool"] is None:
            _state["pool"] = ThreadPoolExecutor(get_num_threads(), thread_name_prefix="gpq-rows")
        pool = _state["pool"]
    return list(pool.map(func, slices))
