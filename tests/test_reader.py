"""The one reader of users' files (issue 22): only regular files, links followed once by one rule,
the pixel count read from the header before decoding, names as the OS gives them and printed
escaped, `skip_unreadable` listing what it left out; and the writers' side in `gpq_keras.files`:
stale temporaries swept, outputs checked, one writer at a time.

The cases that hung or grew memory without bound (a FIFO, a link to /dev/zero, a decompression
bomb) run in a subprocess with a deadline and a memory watchdog, so a regression fails fast.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest

from gpq_keras import data as data_package
from gpq_keras import files
from gpq_keras.data import images, nuswide, user
from gpq_keras.files import LockTimeout, UnreadableFile, display_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOMB = "15000 x 15000 pixels exceed --max-pixels 89478485"


def _png(path, shape=(16, 16), seed=0):
    """A PNG of noise (Pillow writes it: no TensorFlow needed) -> its pixels."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


def _chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def bomb_png(path, width=15000, height=15000):
    """A valid 1-bit grey PNG declaring width x height pixels (all black): about 30 KB on disk,
    675 MB as the RGB array a decoder would make of it."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        fh.write(_chunk(b"IDAT", pixels))
        fh.write(_chunk(b"IEND", b""))


# --- the cases that hung: in a subprocess, with a deadline and a memory bound --------------------

_GUARDED = textwrap.dedent(
    """
    import json, os, sys, threading, time
    state = {"case": "import", "start": time.time()}
    def watchdog():
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * page
            if rss > 3 * 2**30:
                print(json.dumps({"case": state["case"], "error": "memory grew past 3 GB"}))
                sys.stdout.flush(); os._exit(3)
            if time.time() - state["start"] > 30:
                print(json.dumps({"case": state["case"], "error": "hung for 30 s"}))
                sys.stdout.flush(); os._exit(4)
            time.sleep(0.05)
    threading.Thread(target=watchdog, daemon=True).start()
    from gpq_keras.data.images import decode_images
    for case, paths in json.loads(sys.argv[1]):
        state.update(case=case, start=time.time())
        try:
            decode_images(paths, 8)
            result = {"case": case, "error": None}
        except Exception as exc:
            result = {"case": case, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result)); sys.stdout.flush()
    """
)


def _guarded(cases):
    """Run decode_images on each (case, paths) in a fresh interpreter -> {case: error line}."""
    run = subprocess.run(
        [sys.executable, "-c", _GUARDED, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results[item["case"]] = item["error"]
    assert run.returncode == 0, (run.returncode, results, run.stderr[-2000:])
    return results


def test_a_fifo_a_link_to_dev_zero_and_a_bomb_are_refused_at_once(tmp_path):
    folder = tmp_path / "photos" / "cats"
    good = str(folder / "ok.png")
    _png(good)
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    bomb_png(folder / "bomb.png")
    assert os.path.getsize(folder / "bomb.png") < 100_000
    os.symlink(folder / "pipe.jpg", tmp_path / "query.jpg")
    results = _guarded(
        [
            ("fifo in a folder", [good, str(folder / "pipe.jpg")]),
            ("fifo as the query", [str(tmp_path / "query.jpg")]),  # a link to the FIFO
            ("zero", [str(folder / "zero.jpg")]),
            ("bomb", [good, str(folder / "bomb.png")]),
        ]
    )
    fifo = "a FIFO (named pipe), not a regular file"
    assert results == {
        "fifo in a folder": f"UnreadableFile: {folder}/pipe.jpg: {fifo}",
        "fifo as the query": f"UnreadableFile: {tmp_path}/query.jpg: {fifo}",
        "zero": f"UnreadableFile: {folder}/zero.jpg: a character device, not a regular file",
        "bomb": f"UnreadableFile: {folder}/bomb.png: {BOMB}",
    }


def test_the_listing_refuses_or_skips_what_is_not_a_regular_file(tmp_path):
    root = tmp_path / "photos"
    _png(root / "cats" / "a.png")
    os.mkfifo(root / "cats" / "pipe.jpg")
    os.symlink("/dev/zero", root / "cats" / "zero.jpg")
    os.symlink(tmp_path / "gone.png", root / "cats" / "gone.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "cats" / "sock.png"))
    try:
        with pytest.raises(UnreadableFile) as info:
            user.list_images(root)
        assert str(info.value) == f"{root}/cats/gone.png: a broken link (to {tmp_path}/gone.png)"
        listing = user.list_images(root, skip_unreadable=True)
    finally:
        server.close()
    assert listing.paths == [f"{root}/cats/a.png"] and listing.class_names == ("cats",)
    assert [reason for _, reason in listing.skipped] == [
        f"{root}/cats/gone.png: a broken link (to {tmp_path}/gone.png)",
        f"{root}/cats/pipe.jpg: a FIFO (named pipe), not a regular file",
        f"{root}/cats/sock.png: a socket, not a regular file",
        f"{root}/cats/zero.jpg: a character device, not a regular file",
    ]
    # a glob lists the same way
    with pytest.raises(UnreadableFile, match="pipe.jpg: a FIFO"):
        user.list_images(str(root / "cats" / "p*.jpg"))


def test_open_regular_never_blocks_and_names_the_kind(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "pipe", tmp_path / "to_pipe")
    for name, why in (
        ("pipe", "a FIFO (named pipe), not a regular file"),
        ("to_pipe", "a FIFO (named pipe), not a regular file"),
        ("folder", "a directory, not a regular file"),
        ("loop1", "a link loop"),
    ):
        with pytest.raises(UnreadableFile) as info:
            files.open_regular(tmp_path / name)
        assert str(info.value) == f"{tmp_path}/{name}: {why}"
    with pytest.raises(FileNotFoundError, match="^image not found: .*/missing.png$"):
        files.open_regular(tmp_path / "missing.png", "image")
    (tmp_path / "ok").write_bytes(b"bytes")
    with files.open_regular(str(tmp_path / "ok")) as fh:
        assert fh.read() == b"bytes"


# --- links ----------------------------------------------------------------------------------------


def _class_tree(tmp_path):
    """photos/cats (real), photos/dogs -> photos/.store/dogs (inside), photos/birds ->
    elsewhere/birds (outside); 3 images each."""
    root = tmp_path / "photos"
    for i in range(3):
        _png(root / "cats" / f"c{i}.png", seed=i)
        _png(root / ".store" / "dogs" / f"d{i}.png", seed=10 + i)
        _png(tmp_path / "elsewhere" / "birds" / f"b{i}.png", seed=20 + i)
    os.symlink(root / ".store" / "dogs", root / "dogs")
    os.symlink(tmp_path / "elsewhere" / "birds", root / "birds")
    return root


def test_a_linked_class_folder_inside_or_outside_keeps_every_label(tmp_path):
    root = _class_tree(tmp_path)
    for listing in (user.list_images(root), user.list_folder(root)):
        assert listing.class_names == ("birds", "cats", "dogs")
        assert listing.paths == [
            f"{root}/{name}/{name[0]}{i}.png"
            for name in ("birds", "cats", "dogs")
            for i in range(3)
        ]
        np.testing.assert_array_equal(listing.labels, np.repeat([0, 1, 2], 3))
        assert listing.skipped == []
    split = user.load_folder(root, image_size=8, query_every=3, labeled_per_class=1)
    assert split.class_names == ("birds", "cats", "dogs") and split.skipped == []
    np.testing.assert_array_equal(np.sort(split.y_query), [0, 1, 2])


def test_a_link_loop_is_reported_once_and_never_walked(tmp_path):
    root = tmp_path / "photos"
    _png(root / "cats" / "a.png")
    os.symlink("..", root / "cats" / "up")  # back to photos/
    os.symlink(".", root / "cats" / "here")  # itself
    with pytest.raises(UnreadableFile) as info:
        user.list_images(root)
    assert str(info.value) == f"{root}/cats/here: a link loop (back to {root}/cats); not walked"
    listing = user.list_images(root, skip_unreadable=True)
    assert listing.paths == [f"{root}/cats/a.png"] and listing.class_names == ("cats",)
    assert [reason for _, reason in listing.skipped] == [
        f"{root}/cats/here: a link loop (back to {root}/cats); not walked",
        f"{root}/cats/up: a link loop (back to {root}); not walked",
    ]


def test_a_class_folder_repeated_by_a_link_is_reported_not_dropped(tmp_path):
    root = tmp_path / "photos"
    _png(root / "cats" / "a.png")
    os.symlink("cats", root / "kitty")
    with pytest.raises(UnreadableFile, match="kitty: the same folder as .*cats, listed already"):
        user.list_folder(root)
    listing = user.list_folder(root, skip_unreadable=True)
    assert listing.class_names == ("cats", "kitty") and listing.paths == [f"{root}/cats/a.png"]
    assert "class 'kitty' gets no images" in listing.skipped[0][1]


def test_a_recursive_glob_over_two_link_loops_ends(tmp_path):
    """Python's glob follows each loop 40 levels deep: 2**40 paths for two loops."""
    root = tmp_path / "photos"
    _png(root / "a" / "x.png")
    os.symlink("..", root / "a" / "up")
    os.symlink("..", root / "a" / "up2")
    code = (
        "import sys, json; from gpq_keras.data.user import list_images\n"
        "try:\n    r = list_images(sys.argv[1])\n    print(json.dumps([r[0], str(r)]))\n"
        "except Exception as e:\n    print(json.dumps([type(e).__name__, str(e)]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(root / "**" / "*.png")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert json.loads(run.stdout) == [
        "UnreadableFile",
        f"{root}/a/up: a link loop (back to {root}); not walked",
    ]
    listing = user.list_images(str(root / "**" / "*.png"), skip_unreadable=True)
    assert listing.paths == [f"{root}/a/x.png"] and len(listing.skipped) == 2


# --- pixels ---------------------------------------------------------------------------------------


def test_the_pixel_limit_is_read_from_the_header(tmp_path, monkeypatch):
    path = str(tmp_path / "a.png")
    pixels = _png(path, shape=(16, 12))
    bomb_png(tmp_path / "bomb.png")
    with pytest.raises(UnreadableFile) as info:
        images.read_images([path, str(tmp_path / "bomb.png")], 8)
    assert str(info.value) == f"{tmp_path}/bomb.png: {BOMB}"
    with pytest.raises(UnreadableFile, match=r"a.png: 12 x 16 pixels exceed --max-pixels 191$"):
        images.read_images([path], 8, max_pixels=191)
    out = images.read_images([path], (16, 12), max_pixels=192).images
    np.testing.assert_array_equal(out[0], pixels)
    assert images.read_images([path], 8, max_pixels=None).images.shape == (1, 8, 8, 3)
    # a file larger than any image of max_pixels could be is not even read
    monkeypatch.setattr(images, "METADATA_BYTES", 0)
    with pytest.raises(UnreadableFile, match=r"a.png: \d+ bytes, larger than any image of"):
        images.read_images([path], 8, max_pixels=16)
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_pixels must be an int >= 1"):
            images.read_images([path], 8, max_pixels=bad)


def test_pixels_are_tensorflows_as_before(tmp_path):
    """read_images decodes with tf.io.decode_image on the bytes: the same pixels as the old
    tf.io.read_file path, chunked or not, and the lazy dataset agrees."""
    import tensorflow as tf

    paths = []
    for i in range(7):
        paths.append(str(tmp_path / f"{i}.png"))
        _png(paths[-1], shape=(20 + i, 13), seed=i)
    jpeg = str(tmp_path / "j.jpg")
    tf.io.write_file(jpeg, tf.io.encode_jpeg(np.full((9, 11, 3), 90, np.uint8)))
    paths.append(jpeg)
    for antialias in (False, True):
        want = np.stack(
            [
                np.clip(
                    np.round(
                        tf.image.resize(
                            tf.io.decode_image(
                                tf.io.read_file(p), channels=3, expand_animations=False
                            ),
                            (6, 5),
                            antialias=antialias,
                        )
                    ),
                    0,
                    255,
                ).astype(np.uint8)
                for p in paths
            ]
        )
        got = images.read_images(paths, (6, 5), batch_size=3, antialias=antialias)
        np.testing.assert_array_equal(got.images, want)
        np.testing.assert_array_equal(got.kept, np.arange(len(paths)))
        lazy = np.concatenate(
            list(images.image_dataset(paths, (6, 5), 3, antialias).as_numpy_iterator())
        )
        np.testing.assert_array_equal(lazy, want)


# --- names ----------------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    folder = os.fsencode(tmp_path / "photos" / "cats")
    os.makedirs(folder)
    name = os.path.join(folder, b"caf\xe9.png")
    pixels = _png(os.fsdecode(name))
    listing = user.list_images(tmp_path / "photos")
    (path,) = listing.paths
    assert isinstance(path, str) and os.fsencode(path) == name
    np.testing.assert_array_equal(images.read_images([path], (16, 16)).images[0], pixels)
    assert display_path(path) == f"{tmp_path}/photos/cats/caf\\xe9.png"
    assert display_path(name) == display_path(path)
    with open(path + ".txt", "w"):
        pass
    os.truncate(path, 0)
    with pytest.raises(UnreadableFile) as info:
        images.read_images([path], 8)
    assert str(info.value).startswith(f"{tmp_path}/photos/cats/caf\\xe9.png: not a decodable")


def test_newlines_and_tabs_in_names_are_shown_escaped(tmp_path):
    assert display_path("a\nb\tc\rd.png") == "a\\nb\\tc\\rd.png"
    assert display_path("\x1b[31mred\u202egnp.exe") == "\\x1b[31mred\\u202egnp.exe"
    assert display_path("фото/写真 ok.png") == "фото/写真 ok.png"
    odd = tmp_path / "two\nlines\tpipe.jpg"
    os.mkfifo(odd)
    with pytest.raises(UnreadableFile) as info:
        images.read_images([str(odd)], 8)
    assert "\n" not in str(info.value) and "\t" not in str(info.value)
    assert (
        str(info.value)
        == f"{tmp_path}/two\\nlines\\tpipe.jpg: a FIFO (named pipe), not a regular file"
    )


# --- skip_unreadable ------------------------------------------------------------------------------


def test_skip_unreadable_lists_what_it_left_out(tmp_path):
    root = tmp_path / "photos"
    keep = [_png(root / "cats" / f"{i}.png", seed=i) for i in range(3)]
    (root / "cats" / "1b.png").write_bytes(b"not an image")
    bomb_png(root / "cats" / "1c.png")
    os.mkfifo(root / "cats" / "2b.png")
    listing = user.list_images(root, skip_unreadable=True)
    assert [reason for _, reason in listing.skipped] == [
        f"{root}/cats/2b.png: a FIFO (named pipe), not a regular file"
    ]
    with pytest.raises(UnreadableFile, match="1b.png: not a decodable image"):
        images.read_images(listing.paths, (16, 16))
    got = images.read_images(listing.paths, (16, 16), batch_size=2, skip_unreadable=True)
    np.testing.assert_array_equal(got.images, np.stack(keep))
    assert [listing.paths[i] for i in got.kept] == [f"{root}/cats/{i}.png" for i in range(3)]
    assert [path for path, _ in got.skipped] == [f"{root}/cats/1b.png", f"{root}/cats/1c.png"]
    assert got.skipped[0][1].startswith(f"{root}/cats/1b.png: not a decodable image (")
    assert got.skipped[1][1] == f"{root}/cats/1c.png: {BOMB}"
    missing = images.read_images([str(root / "gone.png")], 8, skip_unreadable=True)
    assert missing.images.shape == (0, 8, 8, 3) and missing.kept.tolist() == []
    assert missing.skipped == [(str(root / "gone.png"), f"image not found: {root}/gone.png")]


def test_load_data_passes_the_file_options_to_image_sources_only(tmp_path):
    root = tmp_path / "photos"
    for name in ("cats", "dogs"):
        for i in range(4):
            _png(root / name / f"{i}.png", seed=i)
    os.mkfifo(root / "dogs" / "pipe.png")
    with pytest.raises(UnreadableFile, match="pipe.png: a FIFO"):
        data_package.load_data(f"folder:{root}", image_size=8, query_every=2)
    split = data_package.load_data(
        f"folder:{root}", image_size=8, query_every=2, skip_unreadable=True, max_pixels=1000
    )
    assert [path for path, _ in split.skipped] == [f"{root}/dogs/pipe.png"]
    assert len(split.x_query) + len(split.x_labeled) == 8  # given: the database is the labeled
    digits = data_package.load_data("digits", max_pixels=10, skip_unreadable=True)
    assert digits.skipped == []


def test_nuswide_lists_and_images_must_be_regular_files(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    os.mkfifo(lists / "test.txt")
    with pytest.raises(UnreadableFile, match="test.txt: a FIFO"):
        nuswide.read_list(lists / "test.txt")
    (tmp_path / "img").mkdir()
    os.mkfifo(tmp_path / "img" / "p.jpg")
    _png(tmp_path / "img" / "ok.png")
    with pytest.raises(UnreadableFile, match="p.jpg: a FIFO"):
        nuswide.resolve(["ok.png", "p.jpg"], tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="1 of 2 NUS-WIDE images not found"):
        nuswide.resolve(["ok.png", "gone.jpg"], tmp_path / "img")
    assert nuswide.resolve(["p.jpg"], tmp_path / "img", skip_unreadable=True) == [
        str(tmp_path / "img" / "p.jpg")
    ]


# --- writing: temporaries, outputs, locks ---------------------------------------------------------


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_swept_by_the_next_write(tmp_path):
    host = files.temporary_prefix().split("-")[2]
    dead = _dead_pid()
    stale = tmp_path / f".tmp-{dead}-{host}-abcd1234.npz"
    stale.write_bytes(b"left by a kill")
    stale_dir = tmp_path / f".tmp-{dead}-{host}-dir12345"
    (stale_dir / "sub").mkdir(parents=True)
    live = tmp_path / f".tmp-{os.getppid()}-{host}-efgh5678.npz"  # the parent: running
    live.write_bytes(b"being written")
    other_host = tmp_path / f".tmp-{dead}-00000000-ijkl9012.npz"
    other_host.write_bytes(b"another machine's")
    legacy = tmp_path / ".tmp-x1y2z3.keras"  # an older gpq's name: only with legacy=True
    legacy.write_bytes(b"old")
    mine = tmp_path / "notes.txt"
    mine.write_text("not ours")
    with files.atomic_path(tmp_path / "out.npz") as tmp:
        assert os.path.basename(tmp).startswith(f".tmp-{os.getpid()}-{host}-")
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live.name, other_host.name, legacy.name, mine.name, "out.npz"]
    )
    assert files.sweep_temporaries(tmp_path) == [str(legacy)]  # the run folder's sweep
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live.name, other_host.name, mine.name, "out.npz"]
    )


def test_temporary_dir_and_atomic_dir(tmp_path):
    tmp = files.temporary_dir(tmp_path)
    assert os.path.basename(tmp).startswith(files.temporary_prefix()) and os.path.isdir(tmp)
    assert os.stat(tmp).st_mode & 0o777 == 0o777 & ~files.current_umask()
    os.rmdir(tmp)
    with files.atomic_dir(tmp_path / "model") as tmp:
        (open(os.path.join(tmp, "saved.pb"), "w")).close()
    assert os.listdir(tmp_path / "model") == ["saved.pb"]
    with pytest.raises(FileExistsError):
        with files.atomic_dir(tmp_path / "model"):
            pass
    assert os.listdir(tmp_path) == ["model"]


def test_check_output_path_refuses_at_once_in_plain_words(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "pipe")
    cases = [
        ("missing/out.json", "file", "its folder missing does not exist"),
        ("afile/sub", "dir", "afile is a file, not a folder"),
        ("afile/out.json", "file", "afile is a file, not a folder"),
        ("adir", "file", "is a directory; give the path of a file"),
        ("new/", "file", "names a directory (ends with '/'); give the path of a file"),
        ("afile", "dir", "is a file, not a directory"),
        ("pipe", "file", "is a FIFO (named pipe); an output must be a regular file"),
    ]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for path, kind, why in cases:
            with pytest.raises(ValueError) as info:
                files.check_output_path(path, "--output", kind)
            assert str(info.value) == f"--output {path}: {why}", path
        assert files.check_output_path("adir/out.json", "--json") == "adir/out.json"
        assert files.check_output_path("afile", "--output") == "afile"  # replaced atomically
        assert files.check_output_path("runs/demo", "--output", "dir", make_parents=True)
        with pytest.raises(ValueError, match="afile is a file, not a folder"):
            files.check_output_path("afile/a/b", "--output", "dir", make_parents=True)
    finally:
        os.chdir(old)


def test_file_lock_waits_then_gives_up_in_one_line(tmp_path):
    target = str(tmp_path / "index.npz")
    code = (
        "import sys, time; from gpq_keras.files import file_lock\n"
        "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, target], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline() == "held\n"
        start = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with files.file_lock(target, wait=0.3):
                pass
        assert 0.25 < time.monotonic() - start < 10
        assert str(info.value) == (
            f"{target} is locked by another gpq command; gave up after 0.3 s (--wait)"
        )
    finally:
        holder.kill()
        holder.wait()
    with files.file_lock(target, wait=5):  # released when its holder died
        pass
    # threads of one process wait for each other too
    order = []

    def hold():
        with files.file_lock(target):
            order.append("in")
            time.sleep(0.3)
            order.append("out")

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["in", "out", "in", "out"]
