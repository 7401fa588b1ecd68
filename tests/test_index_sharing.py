"""An index that many writers share, and files that say where they came from: `index_writer` locks
and re-reads, `add_files` skips what is indexed, sources are absolute (older relative ones resolve
against the index's folder), faiss files carry a checked sidecar, and a `.keras` is not an index."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from gpq_keras.files import FileFormatError, LockTimeout, file_lock
from gpq_keras.retrieval import (
    AddedFiles,
    PQIndex,
    index_writer,
    is_pqindex_file,
    open_index,
    read_faiss_index,
    write_faiss_index,
)
from gpq_keras.retrieval.faiss_bridge import SIDECAR_SUFFIX, faiss_centroids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M, K, D = 4, 16, 3


@pytest.fixture
def rng():
    return np.random.default_rng(22)


def codebook(rng):
    return rng.standard_normal((K, M * D)).astype(np.float32)


# --- concurrent writers ---------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from gpq_keras.retrieval import index_writer

    path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    open(go + "." + tag, "w").close()  # ready
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)
    codes = np.random.default_rng(abs(hash(tag)) % 2**32).integers(0, 16, (n, 4)).astype(np.uint8)
    with index_writer(path, wait=30) as index:
        entered = time.time()
        time.sleep(0.3)  # hold the lock: the other writer must wait, not read the old file
        index.add(codes, sources=[f"{tag}/{i}.png" for i in range(n)])
        left = time.time()
    print(json.dumps([entered, left]))
    """
)


def _start_writer(path, tag, n, go):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tag, str(n), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_two_concurrent_writers_lose_nothing(rng, tmp_path):
    path = tmp_path / "db.npz"
    PQIndex(codebook(rng), M).save(path)
    want = []
    for round_ in range(3):
        go = tmp_path / f"go{round_}"
        sizes = {f"a{round_}": 35, f"b{round_}": 52}
        writers = [_start_writer(path, tag, n, go) for tag, n in sizes.items()]
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f"{go}.{tag}") for tag in sizes):
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.01)
        go.touch()  # both start together
        spans = []
        for writer in writers:
            out, err = writer.communicate(timeout=90)
            assert writer.returncode == 0, err
            spans.append(json.loads(out))
        for tag, n in sizes.items():
            want += [f"{tag}/{i}.png" for i in range(n)]
        index = PQIndex.load(path)
        assert index.ntotal == len(want)  # 35 + 52 per round, none lost
        assert sorted(index.sources.tolist()) == sorted(want)
        (_, first_left), (second_entered, _) = sorted(spans)
        assert first_left <= second_entered  # one writer at a time


def test_a_writer_that_cannot_get_the_lock_gives_up_naming_the_file(rng, tmp_path):
    path = tmp_path / "db.npz"
    PQIndex(codebook(rng), M).save(path)
    before = path.read_bytes()
    with file_lock(path):  # another gpq command is writing
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            with index_writer(path, wait=0.2) as index:
                index.add(np.zeros((3, M), np.uint8))
        assert time.monotonic() - started < 10
    message = str(caught.value)
    assert (
        message == (f"{path} is locked by another gpq command; gave up after 0.2 s (--wait)")
        and "\n" not in message
    )
    assert path.read_bytes() == before  # nothing written


def test_index_writer_saves_on_a_clean_exit_only(rng, tmp_path):
    path = tmp_path / "db.npz"
    z = codebook(rng)
    with pytest.raises(FileNotFoundError, match="index file not found: .*db.npz"):
        with index_writer(path):
            pass
    with index_writer(path, create=lambda: PQIndex(z, M)) as index:  # a build
        index.add(np.ones((4, M), np.uint8))
    assert PQIndex.load(path).ntotal == 4
    with pytest.raises(RuntimeError, match="encoding failed"):
        with index_writer(path) as index:
            index.add(np.ones((5, M), np.uint8))
            raise RuntimeError("encoding failed")
    assert PQIndex.load(path).ntotal == 4  # nothing saved
    with index_writer(path, create=lambda: PQIndex(z, M)) as index:  # a build replaces
        index.add(np.ones((2, M), np.uint8))
    assert PQIndex.load(path).ntotal == 2
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


# --- add_files: absolute sources, files already indexed ------------------------------------------


def _write_pngs(folder, names, seed=0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / name), tf.io.encode_png(pixels))


def test_add_files_stores_absolute_paths_and_skips_indexed_ones(tiny_config, tmp_path, monkeypatch):
    from gpq_keras.model import GPQ

    model = GPQ(tiny_config)
    _write_pngs(tmp_path / "photos", [f"{i}.png" for i in range(5)])
    monkeypatch.chdir(tmp_path)
    first = [os.path.join("photos", f"{i}.png") for i in range(3)]  # relative, as a user types
    index = PQIndex.from_model(model)
    assert index.add_files(first, labels=[0, 1, 0]) == AddedFiles(3, [], [])
    absolute = [str(tmp_path / "photos" / f"{i}.png") for i in range(5)]
    assert index.sources.tolist() == absolute[:3]
    codes = index.codes.copy()
    again = [
        absolute[1],  # indexed, given absolute
        os.path.join("photos", ".", "2.png"),  # indexed, given another way
        "photos/3.png",
        "photos/4.png",
        "photos/3.png",  # twice in one call
    ]
    added = index.add_files(again, labels=[1, 1, 0, 1, 0])
    assert added == AddedFiles(2, [again[0], again[1], again[4]], [])
    assert index.ntotal == 5 and index.sources.tolist() == absolute
    np.testing.assert_array_equal(index.labels, [0, 1, 0, 0, 1])  # only the added files' labels
    np.testing.assert_array_equal(index.codes[:3], codes)
    index.save(tmp_path / "db.npz")
    monkeypatch.chdir(tmp_path / "photos")  # from another folder: the same files
    back = PQIndex.load(tmp_path / "db.npz")
    assert back.source_paths([[4, 0, -1]]).tolist() == [[absolute[4], absolute[0], ""]]
    assert back.add_files(absolute, model=model) == AddedFiles(0, absolute, [])
    both = PQIndex.from_model(model)
    assert both.add_files(absolute[:3] * 2, skip_indexed=False).added == 6  # as asked


def test_add_files_passes_max_pixels_and_skip_unreadable(tiny_config, tmp_path):
    from gpq_keras.model import GPQ

    model = GPQ(tiny_config)
    _write_pngs(tmp_path, ["a.png", "b.png"])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths = [str(tmp_path / name) for name in ("a.png", "bad.png", "b.png")]
    index = PQIndex.from_model(model)
    with pytest.raises(FileFormatError, match="bad.png"):
        index.add_files(paths, labels=[0, 1, 2])
    assert index.ntotal == 0
    added = index.add_files(paths, labels=[0, 1, 2], skip_unreadable=True)
    assert added.added == 2 and added.already_indexed == []
    assert [os.path.basename(path) for path, _ in added.skipped] == ["bad.png"]
    assert index.sources.tolist() == [paths[0], paths[2]]
    np.testing.assert_array_equal(index.labels, [0, 2])
    with pytest.raises(FileFormatError, match="exceed"):  # 8 x 8 = 64 pixels
        PQIndex.from_model(model).add_files(paths[:1], max_pixels=63)
    data_set = PQIndex.from_model(model).add(np.zeros((2, 3), np.uint8))  # no sources
    with pytest.raises(ValueError, match="items without sources were added before"):
        data_set.add_files([str(tmp_path / "absent.png")])  # refused before anything is read


# --- sources resolved the same way for every reader -----------------------------------------------


def test_an_older_index_with_relative_sources_resolves_against_its_folder(
    rng, tmp_path, monkeypatch
):
    folder = tmp_path / "shared"
    index = PQIndex(codebook(rng), M)
    relative = ["photos/a.png", os.path.join("photos", "sub", "b.png"), "../c.png"]
    index.add(np.zeros((3, M), np.uint8), sources=relative)  # as files written before stored them
    index.save(folder / "db.npz")
    monkeypatch.chdir(tmp_path)
    back = PQIndex.load(folder / "db.npz")
    assert back.folder == str(folder)
    assert back.sources.tolist() == relative  # the stored strings, unchanged
    assert back.sources_for([2, -1]).tolist() == ["../c.png", ""]
    want = [
        str(folder / "photos" / "a.png"),
        str(folder / "photos" / "sub" / "b.png"),
        str(tmp_path / "c.png"),
    ]
    assert back.resolve_sources().tolist() == want
    assert back.source_paths([[1, -1, 2]]).tolist() == [[want[1], "", want[2]]]
    mixed = PQIndex.load(folder / "db.npz")
    mixed.add(np.zeros((1, M), np.uint8), sources=[str(tmp_path / "d.png")])  # absolute stays
    assert mixed.resolve_sources().tolist() == [*want, str(tmp_path / "d.png")]
    with pytest.raises(ValueError, match="no sources"):
        PQIndex(codebook(rng), M).add(np.zeros((1, M), np.uint8)).source_paths([0])


def test_undecodable_names_keep_their_bytes(rng, tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # not UTF-8: a surrogate escape
    index = PQIndex(codebook(rng), M).add(
        np.zeros((1, M), np.uint8), sources=[str(tmp_path / name)]
    )
    index.save(tmp_path / "db.npz")
    back = PQIndex.load(tmp_path / "db.npz")
    assert os.fsencode(back.source_paths([0])[0]) == os.fsencode(str(tmp_path)) + b"/caf\xe9.png"


# --- faiss files checked --------------------------------------------------------------------------


def _faiss_file(rng, tmp_path, n=50, fingerprint=None):
    codes = rng.integers(0, K, (n, M)).astype(np.uint8)
    index = PQIndex(codebook(rng), M).add(codes)
    path = tmp_path / "db.faiss"
    write_faiss_index(index.to_faiss(), path, index.pq, fingerprint)
    return index, str(path)


def _flip(path, offset, count=8):
    data = bytearray(open(path, "rb").read())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_faiss_file_with_damaged_codes_is_refused_naming_it(rng, tmp_path):
    index, path = _faiss_file(rng, tmp_path)
    sidecar = json.loads(open(path + SIDECAR_SUFFIX).read())
    assert sidecar["faiss_bytes"] == os.path.getsize(path) and sidecar["mode"] == "original"
    queries = rng.standard_normal((4, M * D)).astype(np.float32)
    d, i = read_faiss_index(path, index.pq).search(queries, 10)
    np.testing.assert_allclose(d, np.take_along_axis(index.distances(queries), i, 1), atol=1e-5)
    _flip(path, os.path.getsize(path) - 40, 20)  # IndexPQ's codes are the file's last bytes
    with pytest.raises(FileFormatError) as caught:
        read_faiss_index(path, index.pq)
    assert str(caught.value) == (
        f"{path}: the faiss index is damaged (its checksum does not match {path}.gpq.json)"
    )


def test_a_damaged_faiss_codebook_is_damaged_not_another_model(rng, tmp_path):
    index, path = _faiss_file(rng, tmp_path)
    start = open(path, "rb").read().find(faiss_centroids(index.pq).tobytes())
    assert start > 0
    _flip(path, start + 100, 4)
    with pytest.raises(FileFormatError, match=r"db.faiss: the faiss index is damaged"):
        read_faiss_index(path, index.pq)
    # a sidecar made to match the damaged bytes still catches the codebook
    sidecar = json.loads(open(path + SIDECAR_SUFFIX).read())
    import hashlib

    sidecar["faiss_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    open(path + SIDECAR_SUFFIX, "w").write(json.dumps(sidecar))
    with pytest.raises(FileFormatError, match=r"damaged \(its codebook does not match .*gpq.json"):
        read_faiss_index(path, index.pq)


def test_a_faiss_file_without_sidecar_loads_as_before(rng, tmp_path):
    import faiss

    index, path = _faiss_file(rng, tmp_path)
    os.remove(path + SIDECAR_SUFFIX)
    queries = rng.standard_normal((3, M * D)).astype(np.float32)
    want = index.to_faiss().search(index.pq.prepare_queries(queries), 5)[1]
    np.testing.assert_array_equal(read_faiss_index(path, index.pq).search(queries, 5)[1], want)
    faiss.write_index(index.to_faiss(), str(tmp_path / "plain.faiss"))  # faiss' own writer
    assert read_faiss_index(tmp_path / "plain.faiss", index.pq).ntotal == 50
    with pytest.raises(ValueError, match="not built with this model"):
        read_faiss_index(path, PQIndex(codebook(rng), M).pq)
    (tmp_path / "x.faiss.gpq.json").write_text("{not json")
    (tmp_path / "x.faiss").write_bytes(open(path, "rb").read())
    with pytest.raises(FileFormatError, match=r"x.faiss.gpq.json: not a gpq faiss sidecar"):
        read_faiss_index(tmp_path / "x.faiss", index.pq)


def test_a_faiss_file_of_another_model_is_refused(rng, tmp_path):
    index, path = _faiss_file(rng, tmp_path, fingerprint="abc123")
    assert read_faiss_index(path, index.pq, fingerprint="abc123").ntotal == 50
    assert read_faiss_index(path, index.pq).ntotal == 50
    with pytest.raises(ValueError, match="built with another model .fingerprint abc123"):
        read_faiss_index(path, index.pq, fingerprint="def456")


def test_a_reader_between_a_writers_two_renames_waits_for_the_lock(rng, tmp_path):
    index, path = _faiss_file(rng, tmp_path)
    new = PQIndex(index.codebook, M).add(rng.integers(0, K, (70, M)).astype(np.uint8))
    staged = tmp_path / "staged"
    os.makedirs(staged)
    write_faiss_index(new.to_faiss(), staged / "db.faiss", new.pq)
    result = {}
    with file_lock(path):  # the writer, between its two renames
        os.replace(staged / "db.faiss", path)

        def read():
            result["ntotal"] = read_faiss_index(path, index.pq).ntotal

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)
        os.replace(staged / ("db.faiss" + SIDECAR_SUFFIX), path + SIDECAR_SUFFIX)
    reader.join(timeout=30)
    assert result == {"ntotal": 70}


# --- a .keras given as the index ------------------------------------------------------------------


def test_a_keras_model_given_as_the_index_says_so(tiny_config, tmp_path):
    from gpq_keras.model import GPQ

    path = tmp_path / "model.keras"
    GPQ(tiny_config).save(path)
    message = f"{path}: a Keras model file, not a PQIndex (give it as --model)"
    for read in (PQIndex.load, open_index, is_pqindex_file):
        with pytest.raises(FileFormatError) as caught:
            read(path)
        assert str(caught.value) == message
