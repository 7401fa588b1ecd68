"""Embeddings (float (N, D)) as inputs beside images: `check_inputs`, `Split`, `load_npz` (ready
parts, one labeled pool as `gpq embed` writes it, unlabeled only), `load_data`'s protocols and
`unlabeled=`, the record of a split, `gpq data check`'s report and both pipelines (no
augmentation)."""

import os

import numpy as np
import pytest

from gpq_keras.data import Split, check_inputs, eval_input, is_pool_spec, load_data, user
from gpq_keras.data.check import check_split, training_problems
from gpq_keras.data.numpy_pipeline import eval_pydataset, pass_batch, train_pydataset
from gpq_keras.data.protocols import Pool
from gpq_keras.data.split import compare_split_arrays, hold_out_validation, split_arrays
from gpq_keras.files import FileFormatError

pytestmark = pytest.mark.backends  # NumPy and the NumPy pipeline: every backend; tf.data: TF's
CLASSES = ("ant", "bee", "cat")


def vectors(count, width=4, seed=0):
    """float32 (count, width) whose first column is the row number (a row names itself)."""
    x = np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)
    x[:, 0] = np.arange(count)
    return x


def embed_npz(path, per_class=10, width=4, **extra):
    """An npz as `gpq embed` writes it for class sub-folders: x_db float32 (N, D), y_db int64,
    class_names and sources (str) -> (x_db, y_db)."""
    x = vectors(per_class * len(CLASSES), width)
    y = np.repeat(np.arange(len(CLASSES)), per_class).astype(np.int64)
    sources = np.array([f"/photos/{CLASSES[c]}/{i}.jpg" for i, c in enumerate(y)])
    np.savez(path, x_db=x, y_db=y, class_names=np.array(CLASSES), sources=sources, **extra)
    return x, y


def one_line(info):
    message = str(info.value)
    assert "\n" not in message
    return message


def ready_parts(width=4):
    x, y = vectors(30, width), np.arange(30) % 3
    return dict(
        x_query=x[:6], y_query=y[:6], x_db=x[6:], y_db=y[6:], x_labeled=x[6:18], y_labeled=y[6:18]
    )


# --- check_inputs and Split -----------------------------------------------------------------------


def test_check_inputs_gives_float32_embeddings_and_keeps_images():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    out = check_inputs(x, "e")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 4)
    np.testing.assert_array_equal(out, x)
    same = np.zeros((3, 4), np.float32)
    assert check_inputs(same, "e") is same
    strided = check_inputs(np.zeros((4, 6), np.float32)[:, ::2], "e")
    assert strided.flags.c_contiguous and strided.shape == (4, 3)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    assert check_inputs(images, "i") is images


@pytest.mark.parametrize(
    "value, message",
    [
        (
            np.zeros(1000, np.float32),
            "mydata.npz: 'x_db' is 1-D (1000,); embeddings are 2-D float (N, D)",
        ),
        (
            np.zeros((10, 5), np.int64),
            "mydata.npz: 'x_db' must be uint8 images (N, H, W, 3) or float embeddings (N, D); got "
            "int64 (10, 5)",
        ),
        (
            np.zeros((10, 0), np.float32),
            "mydata.npz: 'x_db' must be uint8 images (N, H, W, 3) or float embeddings (N, D); got "
            "float32 (10, 0)",
        ),
        (
            np.zeros((4, 8, 8), np.float32),
            "mydata.npz: 'x_db' must be uint8 images (N, H, W, 3); got float32 (4, 8, 8)",
        ),
    ],
)
def test_check_inputs_errors_are_one_line_naming_the_array(value, message):
    with pytest.raises(ValueError) as info:
        check_inputs(value, "mydata.npz: 'x_db'")
    assert one_line(info) == message


@pytest.mark.parametrize(
    "bad, dtype, what",
    [(np.nan, np.float32, "NaN"), (np.inf, np.float32, "inf"), (-np.inf, np.float16, "-inf")],
)
def test_non_finite_embeddings_are_named_by_row(bad, dtype, what):
    x = np.zeros((40, 3), dtype)
    x[17, 2] = bad
    x[30, 0] = bad  # the first row is named
    with pytest.raises(ValueError) as info:
        check_inputs(x, "mydata.npz: 'x_db'")
    assert one_line(info) == f"mydata.npz: 'x_db' holds {what} at row 17; embeddings must be finite"
    huge = np.zeros((3, 2))
    huge[1, 1] = 1e300  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"holds 1e\+300 at row 1, beyond float32's range"):
        check_inputs(huge, "e")


def test_a_split_of_embeddings():
    parts = ready_parts()
    parts = {k: v.astype(np.float64) if k.startswith("x_") else v for k, v in parts.items()}
    split = Split(**parts, name="emb")
    assert split.takes_vectors and split.input_shape == (4,) and not split.streamed
    for key in ("x_query", "x_db", "x_labeled", "x_unlabeled"):
        assert getattr(split, key).dtype == np.float32
    assert split.x_unlabeled is split.x_db  # the default stays the database itself
    x = vectors(8)
    db = x[2:]
    shared = Split(x[:2], [0, 1], db, np.arange(6) % 2, db, np.arange(6) % 2)
    assert shared.x_labeled is shared.x_db  # one array given twice stays one (given protocol)
    images = Split(
        np.zeros((2, 4, 4, 3), np.uint8), [0, 1], np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 1]
    )
    assert not images.takes_vectors and images.input_shape == (4, 4, 3)


def test_split_parts_of_two_kinds_or_widths_are_one_line():
    parts = ready_parts()
    with pytest.raises(ValueError) as info:
        Split(**dict(parts, x_query=np.zeros((6, 2, 2, 3), np.uint8)), name="emb")
    assert one_line(info) == (
        "emb: x_query are images (6, 2, 2, 3) but x_db are embeddings (24, 4); every part must "
        "be of one kind"
    )
    with pytest.raises(ValueError) as info:
        Split(**parts, x_unlabeled=vectors(5, width=7), name="emb")
    assert one_line(info) == (
        "emb: x_unlabeled are embeddings (5, 7) but x_db are embeddings (24, 4); every part must "
        "have one width"
    )
    with pytest.raises(ValueError, match="^emb: x_query holds no embeddings; the query set"):
        Split(**dict(parts, x_query=parts["x_query"][:0], y_query=parts["y_query"][:0]), name="emb")


def test_a_pool_of_embeddings_goes_through_every_protocol():
    x, y = vectors(60), np.repeat(np.arange(3), 20)
    pool = Pool(x.astype(np.float64), y, name="emb")
    assert pool.images.dtype == np.float32
    from gpq_keras.data.protocols import apply_protocol

    for protocol in ("given", "gpq", "unseen:0.5", "cifar10-1"):
        options = {"labeled_per_class": 5, "queries_per_class": 3, "query_every": 6}
        if protocol.startswith("unseen"):
            pool4 = Pool(vectors(80), np.repeat(np.arange(4), 20), name="emb")
            split = apply_protocol(pool4, protocol, seed=1)
            source = pool4.images
        else:
            split = apply_protocol(pool, protocol, seed=1, **options)
            source = x
        assert split.takes_vectors
        for part, (attr, _) in {"query": ("x_query", 0), "labeled": ("x_labeled", 0)}.items():
            np.testing.assert_array_equal(getattr(split, attr), source[split.index[part]])
    with pytest.raises(ValueError, match=r"^p: images is 1-D \(4,\); embeddings are 2-D float"):
        Pool(np.zeros(4, np.float32), [0, 1, 0, 1], name="p")


# --- npz files ------------------------------------------------------------------------------------


def test_npz_of_ready_parts_holds_embeddings(tmp_path):
    parts = ready_parts()
    np.savez(tmp_path / "emb.npz", **parts, class_names=np.array(CLASSES))
    split = load_data(f"npz:{tmp_path / 'emb.npz'}")
    assert split.takes_vectors and split.protocol == "given" and split.class_names == CLASSES
    for key in ("x_query", "x_db", "x_labeled"):
        np.testing.assert_array_equal(getattr(split, key), parts[key])
    assert not is_pool_spec(f"npz:{tmp_path / 'emb.npz'}")
    x, y = vectors(40), np.arange(40) % 4
    np.savez(tmp_path / "four.npz", x_query=x[:8], y_query=y[:8], x_db=x[8:], y_db=y[8:])
    unseen = load_data(f"npz:{tmp_path / 'four.npz'}", protocol="unseen:0.5", seed=0)
    assert unseen.takes_vectors and len(unseen.seen_classes) == len(unseen.unseen_classes) == 2
    assert set(unseen.y_query.tolist()) <= set(unseen.unseen_classes)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(x_db=a["x_db"][:, 0]), "'x_db' is 1-D (24,); embeddings are 2-D"),
        (lambda a: a["x_db"].__setitem__((17, 1), np.nan), "'x_db' holds NaN at row 17"),
        (
            lambda a: a.update(x_labeled=a["x_labeled"].astype(np.int64)),
            "'x_labeled' must be uint8 images (N, H, W, 3) or float embeddings (N, D); got int64 "
            "(12, 4)",
        ),
        (
            lambda a: a.update(x_query=np.zeros((6, 2, 2, 3), np.uint8)),
            "'x_query' are images (6, 2, 2, 3) but 'x_db' are embeddings (24, 4); every array "
            "must be of one kind",
        ),
        (
            lambda a: a.update(x_query=vectors(6, width=5)),
            "'x_query' are embeddings (6, 5) but 'x_db' are embeddings (24, 4); all embeddings "
            "must have one width",
        ),
        (
            lambda a: a.update(class_names=np.array(["a", "b"])),
            "'class_names' names 2 classes but 'y_query' holds class id 2",
        ),
    ],
)
def test_npz_errors_name_the_file_and_array(tmp_path, change, message):
    arrays = ready_parts()
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FileFormatError) as info:
        user.load_npz(path)
    assert one_line(info).startswith(f"{path}: {message}")


def test_an_embed_npz_is_a_pool_split_by_the_given_protocol(tmp_path):
    path = tmp_path / "emb.npz"
    x, y = embed_npz(path)
    spec = f"npz:{path}"
    assert is_pool_spec(spec) and is_pool_spec(f"folder:{tmp_path}")
    assert not is_pool_spec(f"npz:{tmp_path / 'missing.npz'}") and not is_pool_spec("digits")
    split = load_data(spec)
    # given: a tenth of the smallest class (1) per class held out as queries, the rest labeled
    # and the database (and the unlabeled stream)
    assert split.protocol == "given" and split.name == "emb" and split.class_names == CLASSES
    assert (len(split.x_query), len(split.x_labeled), len(split.x_db)) == (3, 27, 27)
    assert split.x_labeled is split.x_db and split.x_unlabeled is split.x_db
    np.testing.assert_array_equal(split.index["query"], [0, 10, 20])
    for part, (xa, ya) in {
        "query": ("x_query", "y_query"),
        "database": ("x_db", "y_db"),
    }.items():
        np.testing.assert_array_equal(getattr(split, xa), x[split.index[part]])
        np.testing.assert_array_equal(getattr(split, ya), y[split.index[part]])
    more = load_data(spec, query_per_class=3)
    assert (len(more.x_query), len(more.x_labeled)) == (9, 21)
    assert np.bincount(more.y_query).tolist() == [3, 3, 3]


def test_an_embed_npz_takes_the_other_protocols(tmp_path):
    path = tmp_path / "emb.npz"
    x, _ = embed_npz(path, per_class=110)  # cifar10-1 takes 100 queries per class
    spec = f"npz:{path}"
    gpq = load_data(spec, protocol="gpq", labeled_per_class=4, query_every=6)
    assert gpq.protocol == "gpq" and (len(gpq.x_query), len(gpq.x_labeled)) == (55, 12)
    assert len(gpq.x_db) == 330 - 55 - 12 and gpq.takes_vectors and gpq.class_names == CLASSES
    np.testing.assert_array_equal(gpq.x_labeled, x[gpq.index["labeled"]])
    scarce = load_data(spec, labeled_per_class=4)  # gpq, as for a folder
    assert scarce.protocol == "gpq" and len(scarce.x_labeled) == 12
    deephash = load_data(spec, protocol="cifar10-1", seed=3, labeled_per_class=5)
    assert deephash.protocol == "cifar10-1" and len(deephash.x_labeled) == 15
    np.testing.assert_array_equal(deephash.x_query, x[deephash.index["query"]])
    with pytest.raises(ValueError, match="no train/test division"):
        load_data(spec, protocol="cifar10-2")
    x4 = vectors(40)
    np.savez(tmp_path / "four.npz", x_db=x4, y_db=np.repeat(np.arange(4), 10))
    unseen = load_data(f"npz:{tmp_path / 'four.npz'}", protocol="unseen:0.5", seed=2)
    assert unseen.protocol == "unseen:0.5" and len(unseen.seen_classes) == 2
    assert set(unseen.y_labeled.tolist()) <= set(unseen.seen_classes)
    assert set(unseen.y_db.tolist()) <= set(unseen.unseen_classes)
    np.testing.assert_array_equal(unseen.x_db_all, x4[unseen.index["database_all"]])


def test_the_record_of_an_npz_pool_names_its_positions(tmp_path):
    path = tmp_path / "emb.npz"
    x, y = embed_npz(path, per_class=110)
    spec = f"npz:{path}"
    split = load_data(spec, protocol="cifar10-1", seed=0, labeled_per_class=5)
    train, x_val, y_val = hold_out_validation(split, 2)
    assert train.takes_vectors and x_val.dtype == np.float32 and len(x_val) == 6
    record = split_arrays(train, x_val)
    np.testing.assert_array_equal(x[record["validation_index"]], x_val)
    np.testing.assert_array_equal(x[record["labeled_index"]], train.x_labeled)
    np.testing.assert_array_equal(x[record["query_index"]], train.x_query)
    assert not np.isin(record["validation_index"], record["labeled_index"]).any()
    database, _ = train.validation_database(x_val)
    assert len(database) == len(train.x_db) - len(x_val)  # cifar10-1: the labeled are in it
    again = hold_out_validation(
        load_data(spec, protocol="cifar10-1", seed=0, labeled_per_class=5), 2
    )
    assert compare_split_arrays(record, split_arrays(again[0], again[1]), "run") is None
    other = load_data(spec, protocol="cifar10-1", seed=1, labeled_per_class=5)
    changed = compare_split_arrays(record, split_arrays(*hold_out_validation(other, 2)[:2]), "run")
    assert changed.startswith("run: the ") and "differ" in changed


def test_an_npz_without_labels_is_refused_as_data_and_feeds_the_unlabeled_stream(tmp_path):
    extra = vectors(7, seed=5)
    np.savez(tmp_path / "pool.npz", x_db=extra)
    with pytest.raises(FileFormatError) as info:
        load_data(f"npz:{tmp_path / 'pool.npz'}")
    message = one_line(info)
    assert message.startswith(f"{tmp_path / 'pool.npz'}: holds no labels (no 'y_db')")
    assert "--unlabeled" in message and not is_pool_spec(f"npz:{tmp_path / 'pool.npz'}")
    embed_npz(tmp_path / "emb.npz")
    for given in (str(tmp_path / "pool.npz"), f"npz:{tmp_path / 'pool.npz'}"):
        split = load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=given)
        np.testing.assert_array_equal(split.x_unlabeled, extra)
        assert "unlabeled" not in split.index and len(split.x_labeled) == 27
    np.savez(tmp_path / "four.npz", x_db=vectors(40), y_db=np.arange(40) % 4)
    unseen = load_data(
        f"npz:{tmp_path / 'four.npz'}", protocol="unseen:0.5", unlabeled=str(tmp_path / "pool.npz")
    )
    np.testing.assert_array_equal(unseen.x_unlabeled, extra)  # the user's pool is kept
    record = split_arrays(split)
    np.testing.assert_array_equal(record["unlabeled_index"], np.arange(7))
    np.savez(tmp_path / "ready.npz", **ready_parts())  # ready parts of embeddings take it too
    ready = load_data(f"npz:{tmp_path / 'ready.npz'}", unlabeled=str(tmp_path / "pool.npz"))
    np.testing.assert_array_equal(ready.x_unlabeled, extra)
    np.savez(tmp_path / "own.npz", x_unlabeled=extra[:3], x_db=extra)  # x_unlabeled first
    np.testing.assert_array_equal(
        load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=str(tmp_path / "own.npz")).x_unlabeled,
        extra[:3],
    )


def test_unlabeled_inputs_of_another_width_or_kind_are_one_line(tmp_path):
    embed_npz(tmp_path / "emb.npz")
    np.savez(tmp_path / "wide.npz", x_db=vectors(5, width=6))
    with pytest.raises(FileFormatError) as info:
        load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=str(tmp_path / "wide.npz"))
    assert one_line(info) == (
        f"--unlabeled {tmp_path / 'wide.npz'}: 'x_db' are embeddings (5, 6) but the data are "
        "embeddings (N, 4); the widths must match"
    )
    np.savez(tmp_path / "images.npz", x_db=np.zeros((5, 4, 4, 3), np.uint8))
    with pytest.raises(FileFormatError, match="'x_db' are images .* they must be of one kind$"):
        load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=str(tmp_path / "images.npz"))
    os.makedirs(tmp_path / "photos")
    with pytest.raises(ValueError) as info:
        load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=str(tmp_path / "photos"))
    assert one_line(info) == (
        f"--unlabeled {tmp_path / 'photos'}: the data are embeddings (N, 4); their unlabeled set "
        "is an .npz of embeddings (x_unlabeled or x_db), not image files"
    )
    np.savez(tmp_path / "own.npz", x_db=vectors(30), y_db=np.arange(30) % 3, x_unlabeled=vectors(4))
    assert len(load_data(f"npz:{tmp_path / 'own.npz'}").x_unlabeled) == 4  # its own stream
    with pytest.raises(ValueError, match="carries its own unlabeled set \\('x_unlabeled'\\)"):
        load_data(f"npz:{tmp_path / 'own.npz'}", unlabeled=str(tmp_path / "emb.npz"))
    with pytest.raises(FileNotFoundError, match="--unlabeled: npz file not found"):
        load_data(f"npz:{tmp_path / 'emb.npz'}", unlabeled=str(tmp_path / "none.npz"))


def test_a_pool_npz_refuses_what_it_cannot_split(tmp_path):
    x = vectors(12)
    np.savez(tmp_path / "multi.npz", x_db=x, y_db=np.eye(3, dtype=np.int64)[np.arange(12) % 3])
    with pytest.raises(FileFormatError, match=r"'y_db' is multi-hot \(12, 3\); an npz without"):
        load_data(f"npz:{tmp_path / 'multi.npz'}")
    np.savez(tmp_path / "half.npz", x_db=x, y_db=np.arange(12) % 3, x_labeled=x, y_labeled=x[:, 0])
    with pytest.raises(FileFormatError, match="has 'x_labeled' but no 'x_query'"):
        load_data(f"npz:{tmp_path / 'half.npz'}")
    np.savez(tmp_path / "short.npz", x_db=x, y_db=np.arange(12) % 3, class_names=np.array(["a"]))
    with pytest.raises(FileFormatError) as info:
        load_data(f"npz:{tmp_path / 'short.npz'}")
    assert one_line(info) == (
        f"{tmp_path / 'short.npz'}: 'class_names' names 1 classes but 'y_db' holds class id 2"
    )


# --- gpq data check -------------------------------------------------------------------------------


def test_data_check_reports_an_embedding_split(tmp_path):
    embed_npz(tmp_path / "emb.npz")
    split = load_data(f"npz:{tmp_path / 'emb.npz'}")
    report = check_split(split)
    assert report["input"] == {"kind": "embeddings", "shape": [4]}
    assert report["parts"] == {
        "query": 3,
        "labeled": 27,
        "unlabeled": 27,
        "database": 27,
        "validation": 0,
    }
    assert report["per_class"]["labeled"] == [9, 9, 9] and report["per_class"]["query"] == [1] * 3
    assert report["unreadable"] == [] and report["class_names"] == list(CLASSES)
    assert report["overlaps"] == {"query_labeled": 0, "query_database": 0}
    assert training_problems(split, report) == []


# --- the pipelines --------------------------------------------------------------------------------


def embedding_split(width=4):
    x_l, x_u = vectors(12, width), vectors(9, width, seed=1) + 100  # rows told apart
    y = np.arange(12) % 3
    return Split(x_l[:3], y[:3], x_u, np.arange(9) % 3, x_labeled=x_l, y_labeled=y, name="emb")


def test_tf_data_batches_are_the_rows_of_the_stream_indices():
    import tensorflow as tf

    from gpq_keras.data import tf_pipeline

    split = embedding_split()
    for options in ({}, {"augmented": False}, {"normalized": True}):
        dataset, steps = tf_pipeline.train_dataset(split, batch_size=4, seed=7, **options)
        assert steps == 3
        labeled = tf_pipeline._pass_batches(12, 4, 7, 0)
        unlabeled = tf_pipeline._pass_batches(9, 4, 8, 0)
        for (x, y), i_l, i_u in zip(dataset.take(5), labeled, unlabeled):
            assert x["labeled"].dtype == tf.float32 and x["labeled"].shape == (4, 4)
            np.testing.assert_array_equal(x["labeled"].numpy(), split.x_labeled[i_l.numpy()])
            np.testing.assert_array_equal(x["unlabeled"].numpy(), split.x_unlabeled[i_u.numpy()])
            np.testing.assert_array_equal(y.numpy(), split.y_labeled[i_l.numpy()])
    later, _ = tf_pipeline.train_dataset(split, batch_size=4, seed=7, start_step=3)
    first, _ = tf_pipeline.train_dataset(split, batch_size=4, seed=7)
    for a, b in zip(later.take(2), first.skip(3).take(2)):
        np.testing.assert_array_equal(a[0]["labeled"].numpy(), b[0]["labeled"].numpy())
    batches = list(tf_pipeline.eval_dataset(split.x_db.astype(np.float64), batch_size=4))
    assert [b.dtype for b in batches] == [tf.float32] * 3
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]), split.x_db)


def test_numpy_batches_are_the_rows_of_the_stream_indices():
    split = embedding_split()
    for options in ({}, {"augmented": False}, {"normalized": True}):
        dataset, steps = train_pydataset(split, batch_size=4, seed=7, **options)
        assert steps == 3
        for step in range(5):
            x, y = dataset[step]
            i_l, i_u = pass_batch(12, 4, 7, step), pass_batch(9, 4, 8, step)
            assert x["labeled"].dtype == np.float32 and x["unlabeled"].dtype == np.float32
            np.testing.assert_array_equal(x["labeled"], split.x_labeled[i_l])
            np.testing.assert_array_equal(x["unlabeled"], split.x_unlabeled[i_u])
            np.testing.assert_array_equal(y, split.y_labeled[i_l])
    batches = eval_pydataset(split.x_db, batch_size=4, normalized=True)
    assert len(batches) == 3 and batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([batches[i] for i in range(3)]), split.x_db)
    out = eval_input(split.x_db, pipeline="numpy", batch_size=5)
    np.testing.assert_array_equal(np.concatenate([out[i] for i in range(len(out))]), split.x_db)


def test_an_embed_npz_trains_through_the_numpy_pipeline(tmp_path):
    embed_npz(tmp_path / "emb.npz")
    split = load_data(f"npz:{tmp_path / 'emb.npz'}", query_per_class=2)
    dataset, steps = train_pydataset(split, batch_size=8, seed=0)
    x, y = dataset[0]
    assert steps == 3 and x["labeled"].shape == (8, 4) and x["unlabeled"].shape == (8, 4)
    rows = x["labeled"][:, 0].astype(int)  # a row's first value is its position in the npz
    np.testing.assert_array_equal(y, np.repeat(np.arange(3), 10)[rows])
