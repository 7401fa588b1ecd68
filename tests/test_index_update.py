"""An index kept up to date: `PQIndex.remove` / `update` / `ids_for_files`, near-duplicate groups
and `search_unique` against NumPy references, format version 4, and `gpq index remove`, `index add
--update`, `index dedup` and `search --unique` on a folder changed between two runs."""

import json
import os

import numpy as np
import pytest
from test_cli_images import CONFIG, write_images
from test_index_file import rewrite

from gpq_keras.files import FileFormatError
from gpq_keras.retrieval import PQIndex


@pytest.fixture
def rng():
    return np.random.default_rng(25)


def _index(rng, n=60, ids=None, sources=True):
    """A random index (M=4, K=16, d=3, original mode) of n items -> (index, features)."""
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    names = [f"/photos/{'a' if i % 2 else 'b'}/{i:03d}.png" for i in range(n)] if sources else None
    return index.add(x, ids=ids, sources=names), x


def _reference_distances(index, queries, codes):
    """sum_m (1 - q_m . z_m[code_m]) in float64, (Q, N)."""
    words = np.asarray(index.codebook, np.float64).reshape(16, 4, 3)  # (K, M, d)
    q = np.asarray(queries, np.float64).reshape(len(queries), 4, 3)
    recon = words[codes, np.arange(4)]  # (N, M, d)
    return (1.0 - np.einsum("qmd,nmd->qnm", q, recon)).sum(-1)


def _assert_ranked_like(dist, ids, ref_dist, ref_ids):
    """The same ranking as a float64 reference: equal distances to float32 precision, the same
    ids wherever the reference's neighbours are not tied within that precision."""
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    gaps = np.diff(ref_dist, axis=1)
    clear = np.ones(ref_ids.shape, bool)
    clear[:, 1:] &= gaps > 1e-4
    clear[:, :-1] &= gaps > 1e-4
    np.testing.assert_array_equal(ids[clear], ref_ids[clear])


# --- remove and update ----------------------------------------------------------------------------


@pytest.mark.parametrize("custom_ids", [False, True])
def test_remove_keeps_ids_and_searches_the_rest_like_brute_force(rng, custom_ids):
    ids = rng.permutation(1000)[:60] if custom_ids else None
    index, _ = _index(rng, ids=ids)
    all_ids, codes = index.ids.copy(), index.codes.copy()
    gone = all_ids[[0, 7, 7, 30, 59]]  # a repeat counts once
    assert index.remove(gone) == 4 and index.ntotal == 56
    keep = ~np.isin(all_ids, gone)
    np.testing.assert_array_equal(index.ids, all_ids[keep])  # stable ids, insertion order
    np.testing.assert_array_equal(index.codes, codes[keep])
    np.testing.assert_array_equal(index.sources_for(all_ids[keep][:3]), index.sources[:3])
    queries = rng.standard_normal((5, 12)).astype(np.float32)
    ref = _reference_distances(index, queries, codes[keep])
    order = np.argsort(ref, axis=1, kind="stable")[:, :10]
    dist, found = index.search(queries, 10)
    _assert_ranked_like(dist, found, np.take_along_axis(ref, order, 1), all_ids[keep][order])
    with pytest.raises(ValueError, match=r"not in the index: \[.*\]") as info:
        index.remove([all_ids[1], gone[0]])  # one known, one removed: nothing is removed
    assert str(gone[0]) in str(info.value) and index.ntotal == 56
    with pytest.raises(ValueError, match="not in the index: -1"):
        index.remove([-1])
    assert index.remove([]) == 0


def test_removed_ids_are_not_reused_and_survive_a_file(rng, tmp_path):
    index, x = _index(rng, n=6)
    index.remove([2, 5])
    index.add(x[:2], sources=["/new/0.png", "/new/1.png"])
    assert index.ids.tolist() == [0, 1, 3, 4, 6, 7]  # past the removed 5, not 4 and 5 again
    index.save(tmp_path / "db.npz")
    with np.load(tmp_path / "db.npz") as data:
        assert int(data["format_version"]) == 4 and int(data["next_id"]) == 8
    back = PQIndex.load(tmp_path / "db.npz")
    np.testing.assert_array_equal(back.ids, index.ids)
    back.add(x[:1], sources=["/new/2.png"])
    assert back.ids[-1] == 8
    rewrite(tmp_path / "db.npz", next_id=np.array(7))
    with pytest.raises(FileFormatError, match="key 'next_id' is 7, not past the largest id"):
        PQIndex.load(tmp_path / "db.npz")


def test_update_replaces_codes_in_place(rng):
    index, x = _index(rng, n=8)
    index.remove([1])
    new = rng.standard_normal((2, 12)).astype(np.float32)
    labels_before = index.sources.copy()
    index.update([3, 7], new, file_stats=[[10, 20], [30, 40]])
    assert index.ids.tolist() == [0, 2, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(index.codes[[2, 6]], index.pq.encode(new))
    np.testing.assert_array_equal(index.codes[[0, 1, 3]], index.pq.encode(x[[0, 2, 4]]))
    np.testing.assert_array_equal(index.sources, labels_before)
    assert index.file_stats[[2, 6]].tolist() == [[10, 20], [30, 40]]
    assert (index.file_stats[[0, 1]] == -1).all()
    with pytest.raises(ValueError, match=r"not in the index: \[1\]"):
        index.update([1], new[:1])
    with pytest.raises(ValueError, match="repeated ids"):
        index.update([3, 3], new)


def test_ids_for_files_matches_folders_and_globs_of_stored_paths(rng, tmp_path):
    index, _ = _index(rng, n=10)
    assert index.ids_for_files("/photos/a").tolist() == [1, 3, 5, 7, 9]
    assert index.ids_for_files(["/photos/b/00[02].png", "/photos/a/009.png"]).tolist() == [
        0,
        2,
        9,
    ]
    assert index.ids_for_files("/**/00?.png").tolist() == list(range(10))
    assert index.ids_for_files("/photos/*/00[!0-7].png").tolist() == [8, 9]
    assert index.ids_for_files("/photos/a/00").tolist() == []  # a folder, not a name prefix
    real = tmp_path / "kept.png"
    real.write_bytes(b"x")
    index.add(np.zeros((1, 4), np.uint8), sources=[str(real)])
    assert index.ids_for_files(["/photos", str(tmp_path)], missing=True).tolist() == list(range(10))


# --- near-duplicates and unique results -----------------------------------------------------------


def _planted(rng):
    """An index of 40 items whose codes repeat in places (equal codes) -> the index."""
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    codes = rng.integers(0, 16, (40, 4)).astype(np.uint8)
    codes[[5, 17, 33]] = codes[2]
    codes[[30]] = codes[11]
    return index.add(codes)


def _reference_groups(index, threshold):
    """Connected components (union-find) of: equal codes, or float64 symmetric distance <= T."""
    words = np.asarray(index.codebook, np.float64).reshape(16, 4, 3)
    recon = words[index.codes, np.arange(4)].reshape(index.ntotal, 12)
    sym = _reference_distances(index, recon, index.codes)
    parent = list(range(index.ntotal))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(index.ntotal):
        for b in range(index.ntotal):
            same = (index.codes[a] == index.codes[b]).all()
            if a != b and (same or (threshold is not None and sym[a, b] <= threshold)):
                parent[root(a)] = root(b)
    groups = {}
    for i in range(index.ntotal):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0]), sym


def _threshold_between_distances(sym, quantile):
    """A threshold halfway in a clear gap of the pairwise distances (no near-tie at it)."""
    values = np.unique(np.round(sym[np.triu_indices(len(sym), 1)], 6))
    gaps = np.diff(values)
    start = int(quantile * len(values))
    i = start + int(np.argmax(gaps[start : start + 50] > 1e-3))
    return float(values[i] + gaps[i] / 2)


def test_duplicate_groups_against_a_numpy_reference(rng):
    index = _planted(rng)
    want, sym = _reference_groups(index, None)
    assert want == [[2, 5, 17, 33], [11, 30]]
    assert [g.tolist() for g in index.duplicate_groups()] == want
    threshold = _threshold_between_distances(sym, 0.01)
    want, _ = _reference_groups(index, threshold)
    assert len(want) >= 3  # more than the equal codes
    assert [g.tolist() for g in index.duplicate_groups(threshold)] == want
    labels = index.duplicate_labels(threshold)
    assert labels[0] == 0 and labels.max() + 1 == len(np.unique(labels))
    with pytest.raises(ValueError, match="finite"):
        index.duplicate_labels(float("nan"))


@pytest.mark.parametrize("threshold", [None, "gap"])
def test_search_unique_keeps_the_best_of_each_group(rng, threshold):
    index = _planted(rng)
    _, sym = _reference_groups(index, None)
    if threshold == "gap":
        threshold = _threshold_between_distances(sym, 0.01)
    groups, _ = _reference_groups(index, threshold)
    group_of = np.arange(index.ntotal)
    for g in groups:
        group_of[g] = g[0]
    queries = rng.standard_normal((6, 12)).astype(np.float32)
    ref = _reference_distances(index, queries, index.codes)
    k = 8
    want_ids, want_dist = [], []
    for q in range(len(queries)):  # walk the full ranking, keeping the first of each group
        order, seen, row = np.argsort(ref[q], kind="stable"), set(), []
        for i in order:
            if group_of[i] not in seen:
                seen.add(group_of[i])
                row.append(i)
        want_ids.append(row[:k])
        want_dist.append(ref[q, row[:k]])
    dist, ids = index.search_unique(queries, k, threshold=threshold)
    _assert_ranked_like(dist, ids, np.array(want_dist), np.array(want_ids))
    for row in ids:  # never two of one group
        assert len({group_of[i] for i in row}) == k
    distinct = len(np.unique(group_of))
    dist, ids = index.search_unique(queries[:1], 50, threshold=threshold)
    assert (ids[0, :distinct] >= 0).all() and (ids[0, distinct:] == -1).all()
    assert np.isinf(dist[0, distinct:]).all()


# --- the file: version 4 -------------------------------------------------------------------------


def test_file_stats_round_trip_and_older_files(rng, tmp_path):
    index, _ = _index(rng, n=4)
    plain = tmp_path / "plain.npz"
    index.save(plain)  # no stats, no removed items: written as version 3
    with np.load(plain) as data:
        assert int(data["format_version"]) == 3 and "file_stats" not in data.files
    stats = np.array([[1, 2], [-1, -1], [5, 6], [7, 8]])
    index.update([0, 2, 3], index.codes[[0, 2, 3]], file_stats=stats[[0, 2, 3]])
    path = tmp_path / "db.npz"
    index.save(path)
    with np.load(path) as data:
        assert int(data["format_version"]) == 4
    back = PQIndex.load(path)
    np.testing.assert_array_equal(back.file_stats, stats)
    assert (PQIndex.load(plain).file_stats == -1).all()  # a version 3 file: stats unknown
    for bad in (np.zeros((4, 3), np.int64), np.zeros((4, 2), np.float64), np.full((4, 2), -2)):
        rewrite(path, file_stats=bad)
        with pytest.raises(FileFormatError, match="key 'file_stats' must be int64"):
            PQIndex.load(path)


# --- add_files(update=True) ----------------------------------------------------------------------


def test_add_files_update_reencodes_changed_files_only(tiny_config, tmp_path):
    import tensorflow as tf

    from gpq_keras.data.images import decode_images
    from gpq_keras.model import GPQ

    model = GPQ(tiny_config)
    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path in paths:
        tf.io.write_file(path, tf.io.encode_png(rng.integers(0, 256, (8, 8, 3), np.uint8)))
    index = PQIndex.from_model(model)
    index.add_files(paths[:3])
    assert index.file_stats.tolist() == [
        [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths[:3]
    ]
    index.update([0], index.codes[:1], file_stats=[[-1, -1]])  # as a version 3 file has it
    pixels = np.full((8, 8, 3), 255, np.uint8)  # a changed file, a later mtime
    tf.io.write_file(paths[1], tf.io.encode_png(pixels))
    mtime = os.stat(paths[1]).st_mtime_ns + 10**9
    os.utime(paths[1], ns=(mtime, mtime))
    codes = index.codes.copy()
    done = index.add_files(paths, update=True)
    assert done.added == 1 and done.updated == (paths[1],)
    assert sorted(done.already_indexed) == [paths[0], paths[2]]  # 0: stats unknown, same code
    assert index.ids.tolist() == [0, 1, 2, 3]
    want = index.pq.encode(model.encode(decode_images(paths[1:2], (16, 16))))
    np.testing.assert_array_equal(index.codes[1], want[0])
    np.testing.assert_array_equal(index.codes[[0, 2]], codes[[0, 2]])
    assert index.file_stats[1].tolist() == [os.stat(paths[1]).st_size, mtime]
    assert (index.file_stats != -1).all()
    again = index.add_files(paths, update=True)
    assert again.added == 0 and sorted(again.already_indexed) == paths and again.updated == ()


# --- the commands, on a folder changed between two runs -------------------------------------------


def _gpq(capsys, *argv):
    """Run `gpq ARGV` -> (exit status, stdout, stderr); a usage error is argparse's exit."""
    from gpq_keras import cli

    capsys.readouterr()
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.large  # end to end through the CLI, as tests/test_cli_images.py
def test_update_remove_dedup_and_unique_on_a_changed_folder(tmp_path, capsys):
    import keras
    import tensorflow as tf

    from gpq_keras import GPQ
    from gpq_keras.data.images import decode_images

    keras.utils.set_random_seed(0)
    model_path, index_path = tmp_path / "m.keras", tmp_path / "db.npz"
    GPQ(CONFIG).save(model_path)
    photos = tmp_path / "photos"
    write_images(photos, 3, np.random.default_rng(0))  # 9 files in blue/, green/, red/
    status, out, _ = _gpq(
        capsys, "index", "build", "--model", model_path, "--images", photos, "--output", index_path
    )
    assert status == 0 and "9 items" in out
    first = PQIndex.load(index_path)
    ids_before = dict(zip(first.sources.tolist(), first.ids.tolist()))

    # The second run: two files added, one changed, one deleted.
    write_images(tmp_path / "extra", 1, np.random.default_rng(1))
    for name in ("blue", "red"):
        os.replace(tmp_path / "extra" / name / "extra_0.jpg", photos / name / "new_0.jpg")
    changed = photos / "green" / "photos_1.png"
    tf.io.write_file(str(changed), tf.io.encode_png(np.full((20, 20, 3), 250, np.uint8)))
    mtime = os.stat(changed).st_mtime_ns + 10**9
    os.utime(changed, ns=(mtime, mtime))
    deleted = photos / "red" / "photos_0.jpg"
    deleted.unlink()
    argv = ["index", "add", "--model", model_path, "--index", index_path, "--images", photos]
    status, out, err = _gpq(capsys, *argv, "--update")
    assert status == 0, err
    assert "10 items (2 added, 1 updated, 7 unchanged, 1 removed)" in out
    index = PQIndex.load(index_path)
    sources = index.sources.tolist()
    assert str(deleted) not in sources and str(photos / "red" / "new_0.jpg") in sources
    assert index.ids[sources.index(str(changed))] == ids_before[str(changed)]  # in place
    assert set(index.ids.tolist()) == set(ids_before.values()) - {ids_before[str(deleted)]} | {
        9,
        10,
    }
    model = keras.models.load_model(model_path)
    want = index.pq.encode(model.encode(decode_images([str(changed)], (16, 16))))
    np.testing.assert_array_equal(index.codes[sources.index(str(changed))], want[0])
    status, out, _ = _gpq(capsys, *argv, "--update")  # nothing changed since
    assert status == 0 and "10 items (0 added, 0 updated, 10 unchanged, 0 removed)" in out

    # Remove by id and by glob; bad ids and patterns change nothing.
    before = index_path.read_bytes()
    status, _, err = _gpq(capsys, "index", "remove", "--index", index_path, "--ids", "0,999")
    assert status == 2 and "--ids: " in err and "no item with id 999; nothing removed" in err
    status, _, err = _gpq(
        capsys, "index", "remove", "--index", index_path, "--images", tmp_path / "nowhere"
    )
    assert status == 2 and "no item of" in err and index_path.read_bytes() == before
    status, _, err = _gpq(capsys, "index", "remove", "--index", index_path, "--ids", "3,x")
    assert status == 2 and "--ids" in err and "3,x" in err
    status, out, _ = _gpq(capsys, "index", "remove", "--index", index_path, "--ids", "0,1")
    assert status == 0 and "8 items (2 removed)" in out
    pattern = photos / "**" / "new_*.jpg"
    status, out, _ = _gpq(capsys, "index", "remove", "--index", index_path, "--images", pattern)
    assert status == 0 and "6 items (2 removed)" in out
    left = PQIndex.load(index_path)
    assert not any(os.path.basename(s).startswith("new_") for s in left.sources)
    assert 0 not in left.ids and 1 not in left.ids

    # Copies of one file: equal codes, one group; --unique shows one of them.
    copies = [photos / "blue" / f"copy_{i}.png" for i in range(2)]
    for copy in copies:
        copy.write_bytes(changed.read_bytes())
    status, out, err = _gpq(capsys, *argv)
    assert status == 0, err
    dups = tmp_path / "dups.json"
    status, out, _ = _gpq(capsys, "index", "dedup", "--index", index_path, "--json", dups)
    assert status == 0 and "groups of near-duplicates (equal codes)" in out
    index = PQIndex.load(index_path)
    groups = json.loads(dups.read_text())["groups"]
    want = [[int(i) for i in g] for g in index.duplicate_groups()]
    assert [[item["id"] for item in g] for g in groups] == want
    copy_group = next(g for g in groups if str(copies[0]) in [item["source"] for item in g])
    assert {item["source"] for item in copy_group} >= {str(changed), *map(str, copies)}
    status, _, err = _gpq(capsys, "index", "dedup", "--index", index_path, "--threshold", "inf")
    assert status == 2 and "--threshold" in err and "finite" in err
    hits = tmp_path / "hits.json"
    query = ["search", "--model", model_path, "--index", index_path, "--image", changed]
    status, _, err = _gpq(capsys, *query, "-k", "20", "--unique", "--json", hits)
    assert status == 0, err
    distinct = int(index.duplicate_labels().max()) + 1
    assert f"-k 20 capped at the {distinct} groups of near-duplicates" in err
    results = json.loads(hits.read_text())["queries"][0]["results"]
    assert len(results) == distinct and len({r["id"] for r in results}) == distinct
    labels = dict(zip(index.ids.tolist(), index.duplicate_labels().tolist()))
    assert len({labels[r["id"]] for r in results}) == distinct  # one of each group
    members = {item["source"] for item in copy_group}
    shown = [r["source"] for r in results if r["source"] in members]
    assert shown == [str(changed)]  # equal codes tie: the first indexed of them is kept
