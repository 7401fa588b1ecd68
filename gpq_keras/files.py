"""Safe file I/O: what gpq reads of a user's files and how it writes its outputs.

- Reading: `open_regular` opens only regular files, without ever blocking on a FIFO or a device;
  `display_path` shows any file name (control characters, bytes that are not UTF-8) on one line.
- Writing: `atomic_path` / `atomic_dir` (a temporary in the same folder, renamed, so that a reader
  never sees half of one; temporaries a killed writer left are swept by the next writer there),
  `check_output_path` (an output refused before any work) and `file_lock` (one writer at a time).
- Untrusted files checked before they are trusted: `.npz` without pickle (`read_npz`), plain-data
  pickles (`restricted_load`) and MAT 5 files (`check_mat5`).

The rules are written out for users in the docs page "Files: what gpq reads and writes"
(docs/reliability.md).
"""

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import socket
import stat
import struct
import tempfile
import unicodedata
import warnings
import zipfile
import zlib

TEMPORARY_PREFIX = ".tmp-"


class FileFormatError(ValueError):
    """A file exists but is not what its reader expects (damaged, truncated, wrong keys, shapes or
    values).

    Every reader of gpq_keras raises this (or a subclass) for bad content, with the file and the
    key, line or image at fault in the message, and FileNotFoundError for a missing file.
    """


class UnreadableFile(FileFormatError):
    """A path that is not a readable regular (image) file: a FIFO, a socket, a device, a directory,
    a broken link, a link loop, an image over the pixel limit or one that does not decode. The
    message names the path (escaped by `display_path`) and why, on one line."""


class LockTimeout(OSError):
    """Another process held a `file_lock` longer than the caller would wait."""


# --- file names in text output --------------------------------------------------------------------

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# characters that reorder or hide the text around them (bidirectional controls)
_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def display_path(path):
    """`path` (str, bytes or path-like) as one line of text output.

    Printable text is unchanged; newlines, tabs and other control characters, line separators and
    bidirectional controls become backslash escapes (`\\n`, `\\t`, `\\x1b`, `\\u202e`), and the
    bytes of a name that are not UTF-8 (which Python's `os.listdir` gives as surrogate escapes)
    `\\xe9`. Only for display: open the file with the path itself.
    """
    path = os.fspath(path)
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# --- reading only regular files -------------------------------------------------------------------


def file_kind(mode):
    """What an `st_mode` is, in words: "a regular file", "a directory", "a FIFO (named pipe)",
    "a socket", "a character device", "a block device" or "a special file"."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once instead of waiting for a writer
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _not_regular(path, shown):
    """UnreadableFile for a path that exists but cannot be opened as a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return UnreadableFile(f"{shown}: a link loop")
        return UnreadableFile(f"{shown}: cannot be read ({exc.strerror})")
    return UnreadableFile(f"{shown}: {file_kind(mode)}, not a regular file")


def open_regular(path, what="file"):
    """Open a regular file for reading (binary) -> a file object; never blocks.

    The file is opened non-blocking (a FIFO opens at once instead of waiting for a writer) and its
    kind checked on the open descriptor, so nothing can be swapped in between: anything but a
    regular file (a FIFO, a socket, a device, a directory; also a link that resolves to one) raises
    `UnreadableFile` naming the path and its kind, as does a broken link, a link loop or a file
    that cannot be read (permissions). A missing path raises FileNotFoundError
    ("{what} not found: PATH"). `path` is a str (undecodable bytes of a name as surrogate escapes,
    as `os.listdir` gives them), bytes or path-like.
    """
    path = os.fspath(path)
    shown = display_path(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise UnreadableFile(
                f"{shown}: a broken link (to {display_path(os.readlink(path))})"
            ) from None
        raise FileNotFoundError(f"{what} not found: {shown}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile(f"{shown}: a link loop") from None
        if os.path.exists(path):  # a socket (ENXIO), a directory on Windows (EACCES)...
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise UnreadableFile(f"{shown}: {file_kind(mode)}, not a regular file") from None
        raise UnreadableFile(f"{shown}: cannot be read ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{shown}: {file_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path):
    """Whether `path` is a regular file or a link resolving to one (stat without opening)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# --- outputs --------------------------------------------------------------------------------------


def check_output_path(path, flag, kind="file", make_parents=False):
    """Refuse at once, in plain words, an output gpq could not write -> `path` (as given).

    Raises ValueError(f"{flag} {path}: ...") when the output is a directory where a file is wanted
    (or its name ends with a slash), a file where a directory is wanted (`kind="dir"`), an existing
    FIFO, device or socket, or when its folder is missing (unless `make_parents`: then only an
    existing ancestor that is a file is refused) or is a file. Call it before any work, for every
    output.
    """
    shown = f"{flag} {display_path(path)}"
    path = os.fspath(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir'; received kind={kind!r}")
    if not path:
        raise ValueError(f"{flag}: an empty path")
    if os.path.isdir(path):
        if kind == "file":
            raise ValueError(f"{shown}: is a directory; give the path of a file")
    elif os.path.lexists(path):
        if not os.path.exists(path):
            pass  # a broken link: the rename replaces the link itself
        elif kind == "dir":
            raise ValueError(f"{shown}: is a file, not a directory")
        elif not is_regular(path):
            raise ValueError(
                f"{shown}: is {file_kind(os.stat(path).st_mode)}; an output must be a regular file"
            )
    elif kind == "file" and path.endswith(("/", os.sep)):
        raise ValueError(f"{shown}: names a directory (ends with '/'); give the path of a file")
    parent = os.path.dirname(path.rstrip("/" + os.sep) or path) or os.curdir
    folder = parent
    while not os.path.exists(folder):
        if os.path.lexists(folder):
            raise ValueError(f"{shown}: its folder {display_path(folder)} is a broken link")
        folder = os.path.dirname(folder) or os.curdir
    if not os.path.isdir(folder):
        raise ValueError(f"{shown}: {display_path(folder)} is a file, not a folder")
    if folder != parent and not make_parents:
        raise ValueError(f"{shown}: its folder {display_path(parent)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: cannot write in the folder {display_path(folder)}")
    return path


def current_umask():
    """The process' file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- temporaries ----------------------------------------------------------------------------------
# A temporary is named `.tmp-<pid>-<host>-<random><suffix>`: the writer's process id and 8 hex
# digits of its host name's SHA-1, so that a later writer on the same host can tell a temporary
# whose writer is gone (swept) from one still being written (kept).


@functools.cache
def _host_id():
    return hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


_TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r"(\d{1,10})-([0-9a-f]{8})-")


def temporary_prefix():
    """The name prefix of this process' temporaries: `.tmp-<pid>-<host>-`."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{_host_id()}-"


def _process_alive(pid):
    """Whether process `pid` of this host runs (True where that cannot be known)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would end the process there; keep its temporaries
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True  # another user's process (or a pid the system cannot look up): kept
    return True


def _writer_gone(name):
    """Whether `name` is a temporary of ours whose writer, a process of this host, is gone."""
    match = _TEMPORARY_NAME.match(name)
    return bool(match) and match[2] == _host_id() and not _process_alive(int(match[1]))


def sweep_temporaries(folder, legacy=True):
    """Remove the temporaries killed writers left in `folder` -> their paths.

    A temporary is a name `.tmp-<pid>-<host>-...` (a regular file, or a folder of `temporary_dir`)
    whose writer, a process of this host, is no longer running; a running writer's temporaries,
    another host's and anything else are kept. Links are never followed or removed.

    With `legacy=True` (for a caller that holds the folder's lock, as `gpq train` its run folder)
    every other regular file named `.tmp-*` goes as well (those of gpq versions that did not name
    the writer), but still not those of running processes of this host. `atomic_path` and
    `temporary_dir` sweep their folder with `legacy=False` before each write.
    """
    folder = os.fspath(folder)
    stale = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return stale
    for entry in entries:
        name = entry.name
        if not name.startswith(TEMPORARY_PREFIX):
            continue
        gone = _writer_gone(name)
        try:
            if entry.is_symlink():
                continue
            if entry.is_file():
                if gone or (legacy and not _TEMPORARY_NAME.match(name)):
                    os.remove(entry.path)
                    stale.append(entry.path)
            elif entry.is_dir() and gone:
                shutil.rmtree(entry.path)
                stale.append(entry.path)
        except FileNotFoundError:
            continue  # swept by another writer meanwhile
        except OSError:
            continue  # not ours to remove (permissions): left in place
    return sorted(stale)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds, else
    remove it.

    `suffix` (default: `path`'s extension) is the temporary name's ending, for writers that pick the
    format from it (Keras' `.keras`, matplotlib, `np.savez` adding `.npz`). The folder is created.
    The file gets the usual permissions (0666 less the umask), not the 0600 of a temporary file.
    The temporary is named after this process (`.tmp-<pid>-<host>-...`), and the temporaries of
    killed writers in the folder are swept first (`sweep_temporaries(folder, legacy=False)`).

    ```python
    with atomic_path("out/codes.npz") as tmp:
        np.savez(tmp, codes=codes)
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    sweep_temporaries(folder, legacy=False)
    handle, tmp = tempfile.mkstemp(
        prefix=temporary_prefix(),
        suffix=os.path.splitext(path)[1] if suffix is None else suffix,
        dir=folder,
    )
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def temporary_dir(folder):
    """Make an empty temporary directory in `folder` (created) -> its path.

    Named as `atomic_path` names its temporaries (`.tmp-<pid>-<host>-...`), so one a killed writer
    left is swept by the next writer in `folder`; swept first, here too. Its permissions are the
    usual ones (0777 less the umask), not `mkdtemp`'s 0700. The caller renames or removes it.
    """
    folder = os.fspath(folder) or "."
    os.makedirs(folder, exist_ok=True)
    sweep_temporaries(folder, legacy=False)
    tmp = tempfile.mkdtemp(prefix=temporary_prefix(), dir=folder)
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside `path` (`temporary_dir`); rename it to `path` when the
    block succeeds, else remove it. Raises FileExistsError (and removes the temporary) when `path`
    exists by then: a directory is never replaced."""
    path = os.fspath(path)
    tmp = temporary_dir(os.path.dirname(os.path.abspath(path)))
    try:
        yield tmp
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "already exists", path)
        os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, data):
    """Write `data` as indented JSON to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


# --- one writer at a time -------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path, wait=60.0):
    """Hold an exclusive lock on `path` for the block: a `filelock.FileLock` on `path + ".lock"`.

    Waits at most `wait` seconds (0: one try; None: no bound) for another holder, then raises
    `LockTimeout` (an OSError) with one line: "PATH is locked by another gpq command; gave up after
    W s (--wait)". The lock is the operating system's (released when the holder exits, even when
    killed), so a stale `.lock` file never blocks.
    """
    import filelock

    path = os.fspath(path)
    lock = filelock.FileLock(path + ".lock", timeout=-1 if wait is None else max(float(wait), 0))
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(
            f"{display_path(path)} is locked by another gpq command; gave up after {wait:g} s "
            "(--wait)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def available_memory():
    """Bytes a new allocation can take now, or None where unknown (then nothing is checked).

    The larger of the free physical pages and Linux's MemAvailable (free pages plus the page cache
    the kernel can drop), capped by a cgroup v2 memory limit (a container's `memory.max` less
    `memory.current`).
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
    """Raise `error` naming `where` (file and key) when `nbytes` (for `what`, e.g.
    "uint8 (10, 32, 32, 3)") exceed the memory available now; nothing is checked where that is
    unknown."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise error(
            f"{where} claims {what} = {format_bytes(nbytes)}, more than the "
            f"{format_bytes(available)} of memory available; not loading it"
        )


MAX_NPY_HEADER = 10000  # np.load's default bound on a .npy header
# What zipfile raises for a damaged archive: BadZipFile, and for bad fields struct.error, EOFError,
# OSError, ValueError (UnicodeDecodeError), NotImplementedError (compression), RuntimeError
# (encryption)...
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


def one_line(exc):
    """An exception as one line: "TypeName: message" with its whitespace collapsed."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _npy_header(path, archive, info, key):
    """(shape, dtype) of one .npy member from its header alone; FileFormatError naming the key for a
    damaged header, an object (pickled) array, or data that would not fit into the member or into
    memory."""
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
        raise FileFormatError(f"{where} is not a readable .npy array ({one_line(exc)})") from None
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
        raise FileFormatError(f"{path}: '{key}' is damaged ({one_line(exc)})") from None


def read_npz_keys(path):
    """The names of the arrays of an `.npz` (nothing read but its zip directory); FileFormatError
    naming the file when it is not a readable zip."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except _ZIP_DAMAGE as exc:
        raise FileFormatError(f"{path}: not a readable .npz ({one_line(exc)})") from None
    return [name[:-4] if name.endswith(".npy") else name for name in names]


def read_npz(path, what="npz file", keys=None, required=()):
    """Arrays of an `.npz`, read without pickle and checked first: {key: array}.

    Every wanted array's `.npy` header is read before any array: object (pickled) arrays, arrays
    larger than their member of the zip or than the memory available are refused without allocating
    them. Anything damaged raises `FileFormatError` (one line, naming the file and the key); a
    missing file FileNotFoundError.

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
        raise FileFormatError(f"{path}: not a readable .npz ({one_line(exc)})") from None
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


# --- restricted unpickling ------------------------------------------------------------------------


def _dtype(*args):
    import numpy as np

    with warnings.catch_warnings():
        # odd arguments of a damaged file: an error follows, or nothing
        warnings.simplefilter("ignore")
        dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes bytes at protocol < 3 as _codecs.encode(str, "latin1"); allow that and nothing
    # else.
    if encoding.lower().replace("-", "") != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed with latin1 text, got {encoding!r}"
        )
    return text.encode("latin1")


def _multiarray():
    try:  # NumPy 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core import multiarray
    return multiarray


def _reconstruct(subtype, shape, dtype):
    # NumPy pickles an array as _reconstruct(ndarray, (0,), b"b") and then its state (shape, dtype,
    # bytes): the placeholder is tiny, so a damaged file cannot make it allocate, and nothing but
    # ndarray is built.
    import numpy as np

    if subtype is not np.ndarray or int(np.prod(shape, dtype=object)) > 1:
        raise pickle.UnpicklingError(
            f"unexpected array placeholder {getattr(subtype, '__name__', subtype)} {shape!r}"
        )
    return _multiarray()._reconstruct(subtype, shape, dtype)


@functools.cache
def _allowed_globals():
    """Everything a plain-data pickle may reference by name: the pieces NumPy arrays are rebuilt
    from."""
    import numpy as np

    scalar = _multiarray().scalar
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class RestrictedUnpickler(pickle._Unpickler):
    """An `Unpickler` that rebuilds only plain data and NumPy arrays; any other global is refused.

    Python 2 pickles (the original CIFAR-10 release) are read with `encoding="bytes"`, so their keys
    are bytes (`b"data"`).

    It is the pure-Python unpickler (as fast here: a CIFAR-10 batch is one large byte string and two
    short lists): the C one keeps its memo as an array indexed by the file's PUT opcodes, so a
    damaged index such as 0x06550255 makes it allocate and sweep hundreds of MB for tens of seconds;
    this one uses a dict.
    """

    def find_class(self, module, name):
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'") from None


def check_plain(value, where="top level"):
    """Raise `pickle.UnpicklingError` naming `where` unless `value` is plain data: dicts, lists,
    bytes, str, ints, NumPy scalars and arrays (not object arrays), nested."""
    import numpy as np

    if not isinstance(value, (dict, list, bytes, str, int, np.ndarray, np.generic)) or isinstance(
        value, bool
    ):
        raise pickle.UnpicklingError(f"unexpected {type(value).__name__} at {where}")
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise pickle.UnpicklingError(f"object array at {where}")
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"a key of {where}")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for item in value:
            check_plain(item, f"an item of {where}")


def restricted_load(data, expected=dict, encoding="bytes"):
    """The bytes of a pickle -> its value, of type `expected`, rebuilt by `RestrictedUnpickler` and
    `check_plain`ed.

    Raises `pickle.UnpicklingError` for a refused global, another top-level type or anything but
    plain data, EOFError for a truncated pickle, and whatever malformed opcodes raise.
    """
    value = RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    if not isinstance(value, expected):
        raise pickle.UnpicklingError(f"expected a {expected.__name__}, got {type(value).__name__}")
    check_plain(value)
    return value


# --- MAT 5 files, checked before scipy reads them -------------------------------------------------

# MAT 5 element types scipy reads numbers from (miINT8 .. miUINT64); miMATRIX and miCOMPRESSED hold
# others.
_MI_NUMERIC = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_SPARSE, _MX_NUMERIC = 5, range(6, 16)


def _mat5_element(data, pos, end, order):
    """The MAT 5 data element at `pos`, read as scipy reads it -> (type, payload, next position)."""
    if end - pos < 8:
        raise ValueError(f"an element tag at byte {pos} runs past the end")
    first, second = struct.unpack_from(order + "II", data, pos)
    if first >> 16:  # small data element: type and size in the first word, up to 4 bytes of data
        if first >> 16 > 4:
            raise ValueError(f"a small data element of {first >> 16} bytes at byte {pos}")
        return first & 0xFFFF, data[pos + 4 : pos + 4 + (first >> 16)], pos + 8
    if second > end - pos - 8:
        raise ValueError(
            f"an element at byte {pos} claims {second} bytes; {end - pos - 8} are left"
        )
    return first, data[pos + 8 : pos + 8 + second], pos + 8 + second + (-second % 8)


def _check_mat5_matrix(payload, order, variable):
    """Check the miMATRIX of `variable` as scipy will read it: a flags word and nzmax, the dims, the
    name, then the numbers (row indices, column pointers, values for a sparse matrix) of numeric
    types."""
    if len(payload) < 16:
        raise ValueError("a matrix header runs past its element")
    flags = struct.unpack_from(order + "I", payload, 8)[0]
    mclass, is_complex = flags & 0xFF, flags >> 11 & 1
    pos = 16  # scipy reads the flags element as 16 raw bytes
    for what in ("dims", "name"):
        kind, _, pos = _mat5_element(payload, pos, len(payload), order)
        if kind not in ((5, 6) if what == "dims" else (1, 16)):
            raise ValueError(f"the {what} of '{variable}' have element type {kind}")
    if mclass != _MX_SPARSE and mclass not in _MX_NUMERIC:
        raise ValueError(f"'{variable}' has MATLAB class {mclass}, not a numeric or sparse matrix")
    for index in range((3 if mclass == _MX_SPARSE else 1) + is_complex):
        kind, _, pos = _mat5_element(payload, pos, len(payload), order)
        if kind not in _MI_NUMERIC:
            raise ValueError(
                f"part {index + 1} of '{variable}' has element type {kind}, not a number type"
            )


def check_mat5(path, data, variable, error=FileFormatError):
    """Raise `error` naming `path` unless the matrix `variable` of a MAT 5 file (its bytes `data`)
    is well formed: a numeric or sparse matrix of number elements.

    scipy's compiled MAT 5 reader looks the element type codes up in a table without a bounds check,
    so a damaged code crashes the interpreter (a segmentation fault) instead of raising: walk the
    elements the way it reads them and refuse such a file first.
    """
    order = "<" if data[126:128] == b"IM" else ">"
    pos = 128
    try:
        while pos < len(data):
            kind, payload, pos = _mat5_element(data, pos, len(data), order)
            if kind == _MI_COMPRESSED:
                inflater = zlib.decompressobj()
                # the inner tag and the start of its header
                payload = inflater.decompress(payload, 16)
                if len(payload) < 8:
                    continue  # scipy refuses it (and reads no data of another variable)
                size = struct.unpack_from(order + "I", payload, 4)[0] + 8
                check_memory(size, f"{path}: a compressed variable", "a decompressed size", error)
                payload += inflater.decompress(
                    inflater.unconsumed_tail, max(size - len(payload), 1)
                )
                kind, payload, _ = _mat5_element(payload, 0, len(payload), order)
            if kind != _MI_MATRIX or len(payload) < 16:
                continue  # scipy refuses it by itself
            name_pos = _mat5_element(payload, 16, len(payload), order)[2]  # past the dims
            name = _mat5_element(payload, name_pos, len(payload), order)[1]
            if bytes(name) == variable.encode():
                _check_mat5_matrix(payload, order, variable)
                return  # scipy reads the first variable of that name
    except (ValueError, struct.error, zlib.error) as exc:
        raise error(f"{path}: not a readable .mat file ({one_line(exc)})") from None
