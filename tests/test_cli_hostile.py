"""The hostile-user cases of issue 22 that the command line owns: outputs checked before any work,
image folders holding FIFOs, device links, linked class folders, decompression bombs and odd
names, an index shared by concurrent writers, damaged faiss files and a model file given as the
index.

Each case gives one clear line naming the file and exit status 2 (nothing written, lost or hung),
or does what it should. A case that hung before runs the `gpq` subprocess under a timeout, so a
regression fails fast instead of hanging the suite.
"""

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib

import keras
import numpy as np
import pytest
from PIL import Image
from test_cli_errors import _digest, _fails_with_one_line
from test_cli_images import COLOURS, CONFIG

from gpq_keras import GPQ, cli
from gpq_keras.retrieval import PQIndex

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

TIMEOUT = 180  # seconds for one `gpq` subprocess: a TensorFlow start on a busy machine, no hang


def _write_images(folder, per_class=2, seed=0):
    """`folder`/{blue,green,red}/NAME_i.png, 16x16 noisy colours -> the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, colour in COLOURS.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (16, 16, 3)), 0, 255)
            path = folder / name / f"{folder.name}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def _png(path, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.fsdecode(path), format="PNG")


def _bomb_png(path, side=9472):
    """A PNG that declares side x side 1-bit grey pixels (more than Pillow's MAX_IMAGE_PIXELS for
    side 9472) in a few kB of zeros."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    deflate = zlib.compressobj(9)
    row = bytes(1 + side // 8)
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data))
        fh.write(chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model (a.keras), a folder of class sub-folders (photos/) and its index."""
    root = tmp_path_factory.mktemp("hostile")
    _write_images(root / "photos")
    keras.utils.set_random_seed(0)
    GPQ(CONFIG).save(root / "a.keras")
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                str(root / "a.keras"),
                "--images",
                str(root / "photos"),
                "--output",
                str(root / "index.npz"),
            ]
        )
        == 0
    )
    return root


def _environment():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _limit_memory():  # a runaway read fails in the child instead of filling the machine
    resource.setrlimit(resource.RLIMIT_DATA, (8 << 30, 8 << 30))


def _gpq(*argv, timeout=TIMEOUT):
    """Run `gpq ARGV` in a subprocess -> CompletedProcess (text; TimeoutExpired when it hangs)."""
    return subprocess.run(
        [sys.executable, "-m", "gpq_keras.cli", *map(os.fspath, argv)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=_environment(),
        preexec_fn=_limit_memory,
    )


def _one_line(result, needle):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and needle in lines[0], lines
    return lines[0]


def _copy_photos(files, folder):
    folder.mkdir()
    for name in COLOURS:
        (folder / name).mkdir()
        for path in (files / "photos" / name).iterdir():
            (folder / name / path.name).write_bytes(path.read_bytes())
    return folder


def _build(files, images, output, *extra):
    return [
        "index",
        "build",
        "--model",
        str(files / "a.keras"),
        "--images",
        str(images),
        "--output",
        str(output),
        *extra,
    ]


@pytest.fixture
def no_model_loaded(monkeypatch):
    """Fail the test if the command loads a model: an output refused before any work."""

    def refuse(path):
        raise AssertionError(f"the model {path} was loaded before the outputs were checked")

    monkeypatch.setattr("gpq_keras.model.load_gpq", refuse)


# --- outputs, before any work ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["folder", "glob", "link"])
def test_an_output_never_replaces_a_file_of_images(files, tmp_path, capsys, how):
    photos = _copy_photos(files, tmp_path / "photos")
    target = photos / "red" / "photos_0.png"
    spec = {"folder": photos, "glob": photos / "**" / "*.png", "link": photos}[how]
    output = target
    if how == "link":  # the output names the photo through a link
        os.symlink(target, tmp_path / "index.npz")
        output = tmp_path / "index.npz"
    before = target.read_bytes()
    line = _fails_with_one_line(_build(files, spec, output), capsys, "is the input --images")
    assert str(target) in line or str(output) in line
    assert target.read_bytes() == before


def test_an_output_inside_a_data_folder_of_images(files, tmp_path, capsys, no_model_loaded):
    photos = _copy_photos(files, tmp_path / "photos")
    target = photos / "blue" / "photos_1.png"
    before = target.read_bytes()
    _fails_with_one_line(
        [
            "encode",
            "--model",
            str(files / "a.keras"),
            "--data",
            f"folder:{photos}",
            "--output",
            str(target),
        ],
        capsys,
        "is an image file in the input --data",
    )
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "case", ["json folder", "json missing folder", "json missing/", "figure folder"]
)
def test_unwritable_outputs_are_refused_before_any_work(
    files, tmp_path, capsys, no_model_loaded, case
):
    (tmp_path / "out").mkdir()
    flag, path, needle = {
        "json folder": ("--json", tmp_path / "out", "is a directory"),
        "json missing folder": ("--json", tmp_path / "missing" / "x.json", "does not exist"),
        "json missing/": ("--json", f"{tmp_path / 'missing'}/", "ends with '/'"),
        "figure folder": ("--figure", tmp_path / "out", "is a directory"),
    }[case]
    start = time.monotonic()
    line = _fails_with_one_line(
        [
            "evaluate",
            "--model",
            str(files / "a.keras"),
            "--data",
            "digits",
            flag,
            str(path),
        ],
        capsys,
        needle,
    )
    assert line.startswith(f"gpq evaluate: error: {flag} {path}")
    assert ".tmp-" not in line and time.monotonic() - start < 10
    assert os.listdir(tmp_path / "out") == [] and not (tmp_path / "missing").exists()


def test_an_output_in_a_missing_or_file_parent_is_refused(files, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for output, needle in (
        (afile / "index.npz", "is a file, not a folder"),
        (tmp_path / "no" / "index.npz", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        line = _fails_with_one_line(
            _build(files, files / "photos", output), capsys, f"--output {output}"
        )
        assert needle in line
    assert afile.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_export_into_a_file_is_refused_in_plain_words(files, tmp_path, capsys, no_model_loaded):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    line = _fails_with_one_line(
        ["export", "--model", str(files / "a.keras"), "--output", str(afile / "sub")],
        capsys,
        f"--output {afile / 'sub'}",
    )
    assert "is a file, not a folder" in line and "File exists" not in line
    assert afile.read_text() == "keep me"


def test_a_killed_export_leaves_nothing_the_next_one_keeps(files, tmp_path):
    # SIGTERM while the SavedModel is written: its temporary folder stays, and the next export
    # beside it sweeps it.
    argv = ["export", "--model", files / "a.keras", "--output", tmp_path / "served"]
    child = subprocess.Popen(
        [sys.executable, "-m", "gpq_keras.cli", *map(os.fspath, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environment(),
        preexec_fn=_limit_memory,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while child.poll() is None and time.monotonic() < deadline:
            if any(name.startswith(".tmp-") for name in os.listdir(tmp_path)):
                child.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        child.wait(timeout=TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM, "the export ended before it could be killed"
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert not (tmp_path / "served").exists()
    assert cli.main([*map(os.fspath, argv[:-1]), str(tmp_path / "s")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["s", "s.codebook.json"]  # and its codebook beside it


# --- what is read: only regular files -------------------------------------------------------------


def test_a_fifo_in_images_is_refused_or_skipped(files, tmp_path):
    photos = _copy_photos(files, tmp_path / "photos")
    fifo = photos / "red" / "pipe.jpg"
    os.mkfifo(fifo)
    output = tmp_path / "index.npz"
    _one_line(_gpq(*_build(files, photos, output)), f"{fifo}")
    assert not output.exists() and "FIFO" in _gpq(*_build(files, photos, output)).stderr
    result = _gpq(*_build(files, photos, output, "--skip-unreadable"))
    assert result.returncode == 0, result.stderr
    assert f"{fifo}" in result.stderr and "1 unreadable file skipped" in result.stderr
    index = PQIndex.load(output)
    assert index.ntotal == 6 and index.class_names == ["blue", "green", "red"]


def test_a_fifo_as_a_query_is_refused_or_skipped(files, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    query = files / "photos" / "red" / "photos_0.png"
    argv = ["search", "--model", files / "a.keras", "--index", files / "index.npz"]
    _one_line(_gpq(*argv, "--image", fifo, "--image", query), f"{fifo}: a FIFO")
    result = _gpq(*argv, "--image", fifo, "--image", query, "--skip-unreadable", "-k", "2")
    assert result.returncode == 0, result.stderr
    assert f"{fifo}" in result.stderr and f"query {query}" in result.stdout
    assert f"query {fifo}" not in result.stdout


def test_a_link_to_a_device_is_refused_fast(files, tmp_path):
    photos = _copy_photos(files, tmp_path / "photos")
    os.symlink("/dev/zero", photos / "blue" / "zero.jpg")
    output = tmp_path / "index.npz"
    line = _one_line(_gpq(*_build(files, photos, output)), "zero.jpg")
    assert "character device" in line and not output.exists()


def test_a_linked_class_folder_keeps_every_label(files, tmp_path):
    photos = _copy_photos(files, tmp_path / "photos")
    outside = tmp_path / "elsewhere"
    (photos / "red").rename(outside)
    os.symlink(outside, photos / "red")
    output = tmp_path / "index.npz"
    assert cli.main(_build(files, photos, output)) == 0
    index = PQIndex.load(output)
    assert index.ntotal == 6 and index.class_names == ["blue", "green", "red"]
    np.testing.assert_array_equal(np.sort(index.labels), [0, 0, 1, 1, 2, 2])


def test_a_decompression_bomb_is_refused_naming_its_size(files, tmp_path, capsys):
    photos = _copy_photos(files, tmp_path / "photos")
    bomb = photos / "green" / "bomb.png"
    _bomb_png(bomb)
    output = tmp_path / "index.npz"
    line = _fails_with_one_line(_build(files, photos, output), capsys, "bomb.png")
    assert "9472 x 9472" in line and "--max-pixels" in line and not output.exists()
    # --max-pixels is the bound: 16 x 16 = 256 pixels pass 256 and fail 255
    assert cli.main(_build(files, files / "photos", output, "--max-pixels", "256")) == 0
    line = _fails_with_one_line(
        _build(files, files / "photos", output, "--max-pixels", "255"), capsys, "exceed"
    )
    assert "16 x 16" in line


def test_names_that_are_not_utf8_or_hold_control_characters(files, tmp_path, capsys):
    photos = _copy_photos(files, tmp_path / "photos")
    odd = {
        os.fsdecode(os.fsencode(photos / "red") + b"/caf\xe9.png"): "caf\\xe9.png",
        str(photos / "red" / "new\nline.png"): "new\\nline.png",
        str(photos / "red" / "tab\there.png"): "tab\\there.png",
    }
    for seed, path in enumerate(odd):
        _png(path, seed)
    output = tmp_path / "index.npz"
    assert cli.main(_build(files, photos, output)) == 0
    index = PQIndex.load(output)
    assert index.ntotal == 9 and set(odd) <= set(index.sources.tolist())
    capsys.readouterr()
    argv = ["search", "--model", str(files / "a.keras"), "--index", str(output), "-k", "9"]
    for path in odd:
        argv += ["--image", path]
    assert cli.main([*argv, "--json", str(tmp_path / "hits.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.startswith("query ") for line in lines].count(True) == 3
    assert len(lines) == 3 * (1 + 9) + 1  # each query, its 9 hits and "wrote ..."
    for escaped in odd.values():
        assert f"query {photos / 'red'}/{escaped}" in lines
        # its query line, and one hit in each of the 3 queries' results
        assert sum(line.endswith(f"/red/{escaped}") for line in lines) == 1 + 3
    report = json.loads((tmp_path / "hits.json").read_text())
    assert [q["query"] for q in report["queries"]] == list(odd)
    for query in report["queries"]:  # absolute resolved paths, the stored names as the OS has them
        assert {hit["source"] for hit in query["results"]} == set(index.sources.tolist())


# --- one index, many writers ----------------------------------------------------------------------


def _add(files, index, images, *extra):
    return [
        "index",
        "add",
        "--model",
        str(files / "a.keras"),
        "--index",
        str(index),
        "--images",
        str(images),
        *extra,
    ]


def test_two_concurrent_adds_lose_nothing(files, tmp_path):
    index_path = tmp_path / "shared.npz"
    assert cli.main(_build(files, files / "photos", index_path)) == 0
    expected = set(PQIndex.load(index_path).sources.tolist())
    for round_ in range(3):
        folders = [tmp_path / f"r{round_}{who}" for who in "ab"]
        for seed, folder in enumerate(folders):
            expected |= {str(p) for p in _write_images(folder, per_class=1, seed=seed)}
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "gpq_keras.cli", *_add(files, index_path, folder)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_environment(),
                preexec_fn=_limit_memory,
            )
            for folder in folders
        ]
        for child in children:
            try:
                _, err = child.communicate(timeout=TIMEOUT)
            finally:
                child.kill()
            assert child.returncode == 0, err.decode()[-2000:]
        index = PQIndex.load(index_path)
        assert index.ntotal == len(expected) and set(index.sources.tolist()) == expected
        names = np.array(index.class_names)[index.labels]
        assert [os.path.basename(os.path.dirname(s)) for s in index.sources] == names.tolist()


def test_adding_a_folder_twice_skips_what_is_indexed(files, tmp_path, capsys):
    index_path = tmp_path / "index.npz"
    assert cli.main(_build(files, files / "photos", index_path)) == 0
    before = PQIndex.load(index_path)
    capsys.readouterr()
    assert cli.main(_add(files, index_path, files / "photos")) == 0
    assert "6 already indexed, skipped" in capsys.readouterr().out
    after = PQIndex.load(index_path)
    assert after.ntotal == 6
    np.testing.assert_array_equal(after.codes, before.codes)


def test_a_locked_index_gives_up_after_wait(files, tmp_path, capsys):
    from gpq_keras.files import file_lock

    index_path = tmp_path / "index.npz"
    assert cli.main(_build(files, files / "photos", index_path)) == 0
    before = _digest(tmp_path)
    with file_lock(str(index_path), wait=0):
        start = time.monotonic()
        line = _fails_with_one_line(
            _add(files, index_path, files / "photos", "--wait", "0.5"),
            capsys,
            f"{index_path} is locked by another gpq command; gave up after 0.5 s (--wait)",
        )
        assert time.monotonic() - start < 30 and line.startswith("gpq index: error:")
        _fails_with_one_line(
            _build(files, files / "photos", index_path, "--wait", "0"), capsys, "gave up after 0 s"
        )
    assert _digest(tmp_path) == before


# --- index files that are not what they seem ------------------------------------------------------


def test_a_byte_flipped_faiss_file_is_refused_as_damaged(files, tmp_path, capsys):
    pytest.importorskip("faiss")
    faiss_path = tmp_path / "photos.faiss"
    assert cli.main(_build(files, files / "photos", faiss_path, "--faiss")) == 0
    assert (tmp_path / "photos.faiss.gpq.json").exists()
    data = tmp_path / "queries.npz"
    images = np.zeros((2, 16, 16, 3), np.uint8)
    np.savez(data, x_query=images, y_query=[0, 1], x_db=images, y_db=[0, 1])
    argv = [
        "index",
        "search",
        "--model",
        str(files / "a.keras"),
        "--index",
        str(faiss_path),
        "--data",
        f"npz:{data}",
        "-k",
        "3",
    ]
    assert cli.main(argv) == 0
    content = bytearray(faiss_path.read_bytes())
    content[-5] ^= 0xFF  # the end of the codes
    faiss_path.write_bytes(bytes(content))
    _fails_with_one_line(argv, capsys, f"{faiss_path}: the faiss index is damaged")


def test_a_model_file_given_as_the_index(files, tmp_path, capsys):
    query = str(files / "photos" / "red" / "photos_0.png")
    model = str(files / "a.keras")
    for argv in (
        ["search", "--model", model, "--index", model, "--image", query],
        ["index", "add", "--model", model, "--index", model, "--images", str(files / "photos")],
    ):
        _fails_with_one_line(argv, capsys, "a Keras model file, not a PQIndex (give it as --model)")


def test_a_model_with_nan_weights_is_refused_naming_it(files, tmp_path, capsys):
    # what a diverged run left before runs stopped at a NaN loss
    model = keras.models.load_model(files / "a.keras")
    codewords = model.quantizer.codewords
    codewords.assign(np.full(codewords.shape, np.nan, np.float32))
    path = tmp_path / "nan.keras"
    model.save(path)
    for argv in (
        ["index", "build", "--images", str(files / "photos"), "--output", str(tmp_path / "i.npz")],
        ["evaluate", "--data", "digits", "--json", str(tmp_path / "e.json")],
        [
            "search",
            "--index",
            str(files / "index.npz"),
            "--image",
            str(files / "photos" / "red" / "photos_0.png"),
        ],
    ):
        line = _fails_with_one_line([*argv, "--model", str(path)], capsys, f"--model {path}")
        assert "NaN" in line
    assert sorted(os.listdir(tmp_path)) == ["nan.keras"]


def test_data_folders_take_the_reader_flags(files, tmp_path, capsys):
    photos = tmp_path / "photos"
    _write_images(photos, per_class=4)
    bad = photos / "green" / "not_an_image.png"
    bad.write_bytes(b"hello")
    codes = tmp_path / "codes.npz"
    argv = ["encode", "--model", str(files / "a.keras"), "--data", f"folder:{photos}"]
    _fails_with_one_line([*argv, "--output", str(codes)], capsys, f"{bad}: not a decodable image")
    assert not codes.exists()
    assert cli.main([*argv, "--output", str(codes), "--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {bad}: not a decodable image" in err
    assert "1 unreadable file skipped (--skip-unreadable)" in err
    with np.load(codes) as saved:
        assert len(saved["codes"]) > 0
    _fails_with_one_line(
        [*argv, "--output", str(codes), "--max-pixels", "255"], capsys, "exceed --max-pixels 255"
    )


def test_the_default_pixel_bound_is_the_readers():
    from gpq_keras.cli.common import MAX_PIXELS
    from gpq_keras.data.images import DEFAULT_MAX_PIXELS

    assert MAX_PIXELS == DEFAULT_MAX_PIXELS
    args = cli.build_parser().parse_args(
        ["search", "--model", "m.keras", "--index", "i.npz", "--image", "q.png"]
    )
    assert args.max_pixels == DEFAULT_MAX_PIXELS and args.skip_unreadable is False
