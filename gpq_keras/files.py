"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed."""

import contextlib
import glob
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib

TEMPORARY_PREFIX = ".tmp-"


class FileFormatError(ValueError):
    """A file exists but is not what its reader expects (damaged, truncated, wrong keys, shapes or values).

    Every reader of gpq_keras raises this (or a subclass) for bad content, with the file and the key, line
    or image at fault in the message, and FileNotFoundError for a missing file.
    """


def current_umask():
    """The process' file-creation mask (read without changing it)."""
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
    handle, tmp = tempfile.mkstemp(
        prefix=TEMPORARY_PREFIX,
        suffix=os.path.splitext(path)[1] if suffix is None else suffix,
        dir=folder,
    )
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
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
    stale = [
        p
        for p in glob.glob(os.path.join(glob.escape(os.fspath(folder)), TEMPORARY_PREFIX + "*"))
        if os.path.isfile(p) and not os.path.islink(p)
    ]
    for path in stale:
        os.remove(path)
    return stale


def available_memory():
    """Bytes a new allocation can take now, or None where unknown (then nothing is checked).

    The larger of the free physical pages and Linux's MemAvailable (free pages plus the page cache the
    kernel can drop), capped by a cgroup v2 memory limit (a container's `memory.max` less `memory.current`).
    """

    def read(path):
        with open(path) as fh:
            return fh.read()

    known = []
    try:
        known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    try:
        for line in read("/proc/meminfo").splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not known:
        return None
    available = max(known)
    try:
        limit = read("/sys/fs/cgroup/memory.max").strip()
        if limit != "max":
            available = min(
                available, int(limit) - int(read("/sys/fs/cgroup/memory.current").strip())
            )
    except (OSError, ValueError):
        pass
    return max(available, 0)


def format_bytes(count):
    """1234567890 -> '1.2 GB' (decimal units, as file sizes are shown)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def check_memory(nbytes, where, what, error=FileFormatError):
    """Raise `error` naming `where` (file and key) when `nbytes` (for `what`, e.g. "uint8 (10, 32, 32, 3)")
    exceed the memory available now; nothing is checked where that is unknown."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise error(
            f"{where} claims {what} = {format_bytes(nbytes)}, more than the "
            f"{format_bytes(available)} of memory available; not loading it"
        )


MAX_NPY_HEADER = 10000  # np.load's default bound on a .npy header
# What zipfile raises for a damaged archive: BadZipFile, and for bad fields struct.error, EOFError, OSError,
# ValueError (UnicodeDecodeError), NotImplementedError (compression), RuntimeError (encryption)...
_ZIP_DAMAGE = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    RuntimeError,
    NotImplementedError,
    OverflowError,
    KeyError,
    IndexError,
)


def _one_line(exc):
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _npy_header(path, archive, info, key):
    """(shape, dtype) of one .npy member from its header alone; FileFormatError naming the key for a damaged
    header, an object (pickled) array, or data that would not fit into the member or into memory."""
    import numpy as np

    where = f"{path}: '{key}'"
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(
                    fh, max_header_size=MAX_NPY_HEADER
                )
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(
                    fh, max_header_size=MAX_NPY_HEADER
                )
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except (
        Exception
    ) as exc:  # numpy parses the header with ast and tokenize: any error means damage
        raise FileFormatError(f"{where} is not a readable .npy array ({_one_line(exc)})") from None
    if any(d < 0 for d in shape):
        raise FileFormatError(f"{where} has a negative dimension {shape}; damaged")
    if dtype.hasobject:
        raise FileFormatError(
            f"{where} is an object array (pickled Python objects); not a plain-array .npz"
        )
    what = f"{dtype} {shape}"
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes > info.file_size - offset:
        raise FileFormatError(
            f"{where} claims {what} = {format_bytes(nbytes)} but holds "
            f"{format_bytes(info.file_size - offset)}; damaged or truncated"
        )
    check_memory(nbytes, where, what)
    return shape, dtype


def _npy_array(path, archive, info, key):
    import numpy as np

    try:
        with archive.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
    except MemoryError:
        raise FileFormatError(f"{path}: '{key}' does not fit into the memory available") from None
    except Exception as exc:  # a damaged member: BadZipFile (CRC), zlib.error, EOF in the data...
        raise FileFormatError(f"{path}: '{key}' is damaged ({_one_line(exc)})") from None


def read_npz(path, what="npz file", keys=None, required=()):
    """Arrays of an `.npz`, read without pickle and checked first: {key: array}.

    Every wanted array's `.npy` header is read before any array: object (pickled) arrays, arrays larger
    than their member of the zip or than the memory available are refused without allocating them.
    Anything damaged raises `FileFormatError` (one line, naming the file and the key); a missing file
    FileNotFoundError.

    Args:
        path: the .npz file.
        what: how the file is named in "... not found" errors.
        keys: the arrays to read (those present); None reads all.
        required: keys that must be present (refused, naming them, before anything is read).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_DAMAGE as exc:
        raise FileFormatError(f"{path}: not a readable .npz ({_one_line(exc)})") from None
    with archive:
        members = {}
        for info in archive.infolist():
            members.setdefault(
                info.filename[:-4] if info.filename.endswith(".npy") else info.filename, info
            )
        missing = [k for k in required if k not in members]
        if missing:
            raise FileFormatError(f"{path}: missing arrays {missing} (has {sorted(members)})")
        wanted = [k for k in (members if keys is None else keys) if k in members]
        for (
            key
        ) in wanted:  # every header first: a damaged or huge array is refused before any loading
            _npy_header(path, archive, members[key], key)
        return {key: _npy_array(path, archive, members[key], key) for key in wanted}
