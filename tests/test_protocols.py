"""`gpq_keras.data.protocols`: given, gpq, unseen[:FRACTION], cifar10-1, cifar10-2 on pools and
splits; the parts checked against positions worked out with NumPy, pixels against the pool."""

import numpy as np
import pytest
from data_fakes import fake_cifar_images, image_ids

from gpq_keras.data import digits, protocol_split
from gpq_keras.data.image_files import ImageFiles
from gpq_keras.data.protocols import (
    PROTOCOLS,
    Pool,
    apply_protocol,
    deephash_split,
    given_split,
    parse_protocol,
    unseen_split,
)
from gpq_keras.data.split import Split

PARTS = {"query": "x_query", "labeled": "x_labeled", "unlabeled": "x_unlabeled", "database": "x_db"}
LABELS = {"query": "y_query", "labeled": "y_labeled", "database": "y_db"}


@pytest.fixture(scope="module")
def pool():
    images, labels = fake_cifar_images(600)  # 60 images per class, told apart by pixel [0, 0]
    return Pool(images, labels, 10, None, "fake", train_count=500)


def tiny_pool(labels, train_count=None):
    """1x1 images whose pixel holds their position (red + 256 * green): labels alone, cheap."""
    labels = np.asarray(labels)
    images = np.zeros((len(labels), 1, 1, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (
        np.arange(len(labels)) % 256,
        np.arange(len(labels)) // 256,
    )
    return Pool(images, labels, int(labels.max()) + 1, None, "tiny", train_count)


def assert_index_picks_the_parts(split, pool):
    """Every part's images and labels are the pool's at `split.index[part]`."""
    for part, attr in PARTS.items():
        x = getattr(split, attr)
        if x is None:
            assert part not in split.index
            continue
        index = split.index[part]
        assert index.dtype == np.int64 and len(index) == len(x)
        np.testing.assert_array_equal(image_ids(x), index)  # pixels name the pool position
        np.testing.assert_array_equal(x, pool.images[index])
        if part in LABELS:
            np.testing.assert_array_equal(getattr(split, LABELS[part]), pool.labels[index])
    if split.x_db_all is not None:
        np.testing.assert_array_equal(split.x_db_all, pool.images[split.index["database_all"]])
        np.testing.assert_array_equal(split.y_db_all, pool.labels[split.index["database_all"]])


# --- parse_protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("given", ("given", None)),
        ("gpq", ("gpq", None)),
        ("unseen", ("unseen", None)),
        ("unseen:0.5", ("unseen", 0.5)),
        (" Unseen:.25 ", ("unseen", 0.25)),
        ("unseen:0.999", ("unseen", 0.999)),
        ("cifar10-1", ("cifar10-1", None)),
        ("CIFAR10-2", ("cifar10-2", None)),
    ],
)
def test_parse_protocol_accepts_the_forms(text, expected):
    assert parse_protocol(text) == expected


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "unknown protocol ''"),
        ("paper", "unknown protocol 'paper'"),
        ("unseen75", "unknown protocol 'unseen75'"),
        ("gpq:0.5", "gpq takes no fraction"),
        ("cifar10-1:0.5", "cifar10-1 takes no fraction"),
        ("unseen:", "the fraction '' is not a number"),
        ("unseen:half", "the fraction 'half' is not a number"),
        ("unseen:0", "the fraction 0 is not in (0, 1)"),
        ("unseen:1", "the fraction 1 is not in (0, 1)"),
        ("unseen:1.5", "the fraction 1.5 is not in (0, 1)"),
        ("unseen:-0.2", "the fraction -0.2 is not in (0, 1)"),
        ("unseen:nan", "the fraction nan is not in (0, 1)"),
        ("unseen:inf", "the fraction inf is not in (0, 1)"),
        (None, "expected a str, not NoneType"),
        (0.5, "expected a str, not float"),
    ],
)
def test_parse_protocol_refuses_bad_forms_in_one_line(text, why):
    with pytest.raises(ValueError) as info:
        parse_protocol(text)
    assert str(info.value) == (
        f"bad protocol {text!r}: {why}; accepted: given, gpq, unseen[:FRACTION], cifar10-1, "
        "cifar10-2 (0 < FRACTION < 1, default 0.75)"
    )


def test_every_protocol_name_parses_and_applies_to_a_pool(pool):
    for name in PROTOCOLS:
        assert parse_protocol(name) == (name, None)
        split = apply_protocol(
            pool, name, seed=4, queries_per_class=5, labeled_per_class=20, query_every=6
        )
        assert split.protocol == name and split.seed == 4 and split.name == "fake"
        assert_index_picks_the_parts(split, pool)


# --- given and gpq --------------------------------------------------------------------------------


def test_given_holds_out_the_first_images_of_each_class_as_queries(pool):
    split = given_split(pool, query_per_class=3)
    first = np.concatenate([np.flatnonzero(pool.labels == c)[:3] for c in range(10)])
    np.testing.assert_array_equal(split.index["query"], np.sort(first))
    rest = np.setdiff1d(np.arange(600), first)
    for part in ("labeled", "unlabeled", "database"):
        np.testing.assert_array_equal(split.index[part], rest)
    assert split.x_db is split.x_labeled and split.x_unlabeled is split.x_db
    assert split.part_sizes() == {
        "query": 30,
        "labeled": 570,
        "unlabeled": 570,
        "database": 570,
        "validation": 0,
    }
    assert split.protocol == "given" and split.num_classes == 10
    assert_index_picks_the_parts(split, pool)
    # default: a tenth of the smallest class (60 -> 6); 0: no queries at all
    assert len(given_split(pool).x_query) == 60
    none = given_split(pool, query_per_class=0)
    assert none.x_query is None and none.y_query is None and "query" not in none.index
    assert len(none.x_labeled) == 600


def test_given_keeps_a_labeled_image_in_every_class():
    small = tiny_pool([0] * 5 + [1] * 2 + [2])
    split = given_split(small, query_per_class=2)
    # class 0 gives 2 queries, class 1 (2 images) gives 1, class 2 (1 image) none
    np.testing.assert_array_equal(split.index["query"], [0, 1, 5])
    np.testing.assert_array_equal(split.y_labeled, [0, 0, 0, 1, 2])
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="query_per_class must be an int >= 1"):
            given_split(small, query_per_class=bad)


def test_gpq_is_the_papers_protocol_split(pool):
    split = apply_protocol(pool, "gpq", seed=9, query_every=6, labeled_per_class=20)
    reference = protocol_split(pool.images, pool.labels, query_every=6, labeled_per_class=20)
    for attr in ("x_query", "y_query", "x_labeled", "y_labeled", "x_db", "y_db"):
        np.testing.assert_array_equal(getattr(split, attr), getattr(reference, attr))
    assert split.part_sizes()["query"] == 100 and split.part_sizes()["labeled"] == 200
    assert (split.protocol, split.seed) == ("gpq", 9)
    assert_index_picks_the_parts(split, pool)


# --- cifar10-1 and cifar10-2 ----------------------------------------------------------------------


def test_deephash_protocols_at_cifar10s_real_size_on_labels_alone():
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(10), 6000))
    full = tiny_pool(labels, train_count=50000)
    sizes = {
        name: apply_protocol(full, name).part_sizes()
        for name in ("given", "gpq", "cifar10-1", "cifar10-2", "unseen")
    }
    assert {
        name: (s["query"], s["labeled"], s["unlabeled"], s["database"]) for name, s in sizes.items()
    } == {
        "given": (6000, 54000, 54000, 54000),
        "gpq": (1000, 5000, 54000, 54000),
        "cifar10-1": (1000, 5000, 59000, 59000),
        "cifar10-2": (10000, 50000, 50000, 50000),
        "unseen": (1200, 43200, 10800, 10800),  # 8 seen, 2 unseen classes of the given split
    }
    split = apply_protocol(full, "cifar10-1", seed=0)
    assert np.bincount(split.y_query).tolist() == [100] * 10
    assert np.bincount(split.y_labeled).tolist() == [500] * 10
    assert np.intersect1d(split.index["query"], split.index["database"]).size == 0
    assert np.isin(split.index["labeled"], split.index["database"]).all()  # labeled in the db
    assert np.union1d(split.index["query"], split.index["database"]).tolist() == list(range(60000))
    split = apply_protocol(full, "cifar10-2", seed=0)
    assert split.index["query"].tolist() == list(range(50000, 60000))
    assert split.x_labeled is split.x_db and split.x_unlabeled is split.x_db
    assert split.x_db.base is not None  # a view of the pool, not a copy


def test_cifar10_1_draws_per_class_from_the_seed(pool):
    one = deephash_split(pool, "cifar10-1", seed=0, queries_per_class=5, labeled_per_class=20)
    again = deephash_split(pool, "cifar10-1", seed=0, queries_per_class=5, labeled_per_class=20)
    other = deephash_split(pool, "cifar10-1", seed=1, queries_per_class=5, labeled_per_class=20)
    for part in ("query", "labeled", "database"):
        np.testing.assert_array_equal(one.index[part], again.index[part])
    assert not np.array_equal(one.index["query"], other.index["query"])
    assert np.bincount(one.y_query, minlength=10).tolist() == [5] * 10
    assert np.bincount(one.y_labeled, minlength=10).tolist() == [20] * 10
    assert len(one.x_db) == 550 and np.all(np.diff(one.index["database"]) > 0)
    assert_index_picks_the_parts(one, pool)


def test_deephash_protocols_refuse_data_they_cannot_split(pool):
    with pytest.raises(ValueError) as info:
        deephash_split(pool, "cifar10-1")  # 60 images per class; 100 + 500 needed
    assert str(info.value) == (
        "fake: too few images for cifar10-1 (queries_per_class=100, labeled_per_class=500): "
        "class 0 has 60 images; every class needs at least 600 (600 images in all)"
    )
    with pytest.raises(ValueError) as info:
        apply_protocol(digits.load_pool(), "cifar10-2")
    assert str(info.value) == (
        "digits: cifar10-2 takes the source's test images as queries and its training images as "
        "labeled set and database; this pool of 1797 images has no train/test division "
        "(train_count=None; CIFAR-10 has 50,000 + 10,000)"
    )
    with pytest.raises(ValueError, match="queries_per_class must be an int >= 1"):
        deephash_split(pool, "cifar10-1", queries_per_class=0)
    with pytest.raises(ValueError, match="which must be one of cifar10-1, cifar10-2"):
        deephash_split(pool, "cifar10-3")


# --- unseen ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["given", "gpq", "cifar10-1", "cifar10-2"])
def test_unseen_keeps_seen_classes_out_of_queries_and_database(pool, base):
    source = apply_protocol(pool, base, queries_per_class=5, labeled_per_class=20, query_every=6)
    split = unseen_split(source, 0.75, seed=3)
    seen = np.array(split.seen_classes)
    unseen = np.array(split.unseen_classes)
    assert len(seen) == 8 and len(unseen) == 2
    assert sorted(split.seen_classes + split.unseen_classes) == list(range(10))
    assert np.isin(split.y_labeled, seen).all()
    assert np.isin(split.y_query, unseen).all() and np.isin(split.y_db, unseen).all()
    # every row of the base split of the right classes is kept, in order
    for part, attr in LABELS.items():
        y = getattr(source, attr)
        keep = np.isin(y, seen if part == "labeled" else unseen)
        np.testing.assert_array_equal(split.index[part], source.index[part][keep])
    assert split.x_unlabeled is split.x_db
    np.testing.assert_array_equal(split.index["unlabeled"], split.index["database"])
    np.testing.assert_array_equal(split.x_db_all, source.x_db)  # unseen@all: every class
    np.testing.assert_array_equal(split.y_db_all, source.y_db)
    assert (split.protocol, split.seed, split.num_classes) == ("unseen", 3, 10)
    assert_index_picks_the_parts(split, pool)


def test_unseen_with_multi_hot_labels():
    rng = np.random.default_rng(5)
    width = 8
    labels = rng.integers(0, 2, (300, width)).astype(np.uint8) * (rng.random((300, 1)) < 0.7)
    labels[::7] = 0  # rows of no label: never seen, never unseen
    labels[1::9] = np.eye(width, dtype=np.uint8)[rng.integers(0, width, len(labels[1::9]))]
    images = np.zeros((300, 1, 1, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(300) % 256, np.arange(300) // 256
    source = Split(
        x_query=images[:60],
        y_query=labels[:60],
        x_db=images[60:200],
        y_db=labels[60:200],
        x_labeled=images[200:],
        y_labeled=labels[200:],
        name="tags",
        index={
            "query": np.arange(60),
            "database": np.arange(60, 200),
            "labeled": np.arange(200, 300),
        },
    )
    split = unseen_split(source, 0.5, seed=1)
    seen = np.zeros(width, bool)
    seen[list(split.seen_classes)] = True
    assert seen.sum() == 4 and not set(split.seen_classes) & set(split.unseen_classes)

    def reference(y, classes):  # NumPy by hand: labels, all of them in `classes`
        return np.array([row.any() and all(classes[np.flatnonzero(row)]) for row in y], bool)

    for part, attr in LABELS.items():
        keep = reference(getattr(source, attr), seen if part == "labeled" else ~seen)
        assert 0 < keep.sum() < len(keep)
        np.testing.assert_array_equal(getattr(split, attr), getattr(source, attr)[keep])
        np.testing.assert_array_equal(split.index[part], source.index[part][keep])
        np.testing.assert_array_equal(image_ids(getattr(split, PARTS[part])), split.index[part])
    assert not (split.y_labeled[:, ~seen] != 0).any() and split.y_labeled.any(1).all()
    assert not (split.y_query[:, seen] != 0).any() and not (split.y_db[:, seen] != 0).any()
    np.testing.assert_array_equal(split.y_db_all, source.y_db)


def test_unseen_same_seed_same_classes_another_seed_others(pool):
    source = given_split(pool)
    draws = {seed: unseen_split(source, seed=seed).seen_classes for seed in range(6)}
    assert unseen_split(source, seed=2).seen_classes == draws[2]
    assert len(set(draws.values())) > 1
    assert draws[0] != draws[1]
    one, again = unseen_split(source, seed=1), unseen_split(source, seed=1)
    for part in ("query", "labeled", "database"):
        np.testing.assert_array_equal(one.index[part], again.index[part])
    # the draw is a permutation of the classes by the seed: NumPy's, by hand
    order = np.random.default_rng(4).permutation(10)
    assert unseen_split(source, seed=4).seen_classes == tuple(sorted(order[:8].tolist()))
    # fractions round half up: 0.25 of 10 is 3 seen (2.5), 0.5 is 5
    assert len(unseen_split(source, 0.25).seen_classes) == 3
    assert len(unseen_split(source, 0.5).seen_classes) == 5


def test_unseen_refuses_too_few_classes_on_either_side(pool):
    three = given_split(Pool(pool.images[:90], pool.labels[:90] % 3, 3, None, "three"), 1)
    with pytest.raises(ValueError) as info:
        unseen_split(three, 0.75)
    assert str(info.value) == (
        "three: unseen:0.75 splits 3 classes into 2 seen and 1 unseen; each side needs at "
        "least 2 classes"
    )
    with pytest.raises(ValueError, match="^fake: unseen:0.1 splits 10 classes into 1 seen and 9"):
        unseen_split(given_split(pool), 0.1)
    for bad in (0, 1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="fraction of seen classes must be a number in"):
            unseen_split(given_split(pool), bad)
    # a part left without images: no query of the unseen classes
    source = given_split(pool, 1)
    seen = unseen_split(source, seed=0).seen_classes
    keep = np.isin(source.y_query, seen)
    lonely = Split(
        x_query=source.x_query[keep],
        y_query=source.y_query[keep],
        x_db=source.x_db,
        y_db=source.y_db,
        x_labeled=source.x_labeled,
        y_labeled=source.y_labeled,
        num_classes=10,
        name="lonely",
    )
    with pytest.raises(ValueError) as info:
        unseen_split(lonely, seed=0)
    assert str(info.value) == (
        "lonely: unseen:0.75 (seed=0) leaves no query images (472 of 590 labeled, 0 of 8 query, "
        "118 of 590 database; seen classes [0, 2, 3, 4, 5, 6, 7, 9], unseen [1, 8])"
    )


def test_unseen_keeps_the_users_unlabeled_pool_when_asked(pool):
    source = given_split(pool)
    own = pool.images[:7]
    source = Split(
        **{
            k: getattr(source, k)
            for k in ("x_query", "y_query", "x_db", "y_db", "x_labeled", "y_labeled")
        },
        x_unlabeled=own,
        num_classes=10,
        index={k: v for k, v in source.index.items() if k != "unlabeled"},
    )
    kept = unseen_split(source, keep_unlabeled=True)
    assert kept.x_unlabeled is own and "unlabeled" not in kept.index
    transductive = unseen_split(source)
    assert transductive.x_unlabeled is transductive.x_db
    np.testing.assert_array_equal(transductive.index["unlabeled"], transductive.index["database"])


def test_apply_protocol_unseen_on_a_pool_and_on_a_split(pool):
    split = apply_protocol(pool, "unseen:0.5", seed=2)
    direct = unseen_split(given_split(pool), 0.5, seed=2)
    for part in ("query", "labeled", "unlabeled", "database", "database_all"):
        np.testing.assert_array_equal(split.index[part], direct.index[part])
    assert split.protocol == "unseen" and split.seen_classes == direct.seen_classes
    on_gpq = apply_protocol(pool, "unseen", seed=2, base="gpq", query_every=6, labeled_per_class=20)
    assert len(on_gpq.x_labeled) == 8 * 20 and np.isin(on_gpq.y_labeled, on_gpq.seen_classes).all()
    assert apply_protocol(pool, "unseen", fraction=0.5, seed=2).seen_classes == split.seen_classes
    with pytest.raises(ValueError, match="disagree"):
        apply_protocol(pool, "unseen:0.5", fraction=0.25)
    from_split = apply_protocol(given_split(pool), "unseen:0.5", seed=2)
    np.testing.assert_array_equal(from_split.index["query"], split.index["query"])


# --- sources that bring their own parts, pools, laziness ------------------------------------------


def test_a_split_source_takes_given_and_unseen_only(pool):
    source = given_split(pool)
    same = apply_protocol(source, "given", seed=7)
    assert same is not source and (same.protocol, same.seed) == ("given", 7)
    assert same.x_db is source.x_db and same.x_unlabeled is same.x_db
    source.name = "lists"
    for name in ("gpq", "cifar10-1"):
        with pytest.raises(ValueError) as info:
            apply_protocol(source, name)
        assert str(info.value) == (
            f"protocol {name} splits one pool of labeled images (digits, cifar10:, tfds:, "
            "folder:); lists brings its own query, database and training parts (use given or "
            "unseen)"
        )
    with pytest.raises(ValueError, match=r"^protocol cifar10-2 splits .*train/test division"):
        apply_protocol(source, "cifar10-2")
    with pytest.raises(TypeError, match="unknown option 'query_evry'"):
        apply_protocol(pool, "gpq", query_evry=3)
    with pytest.raises(TypeError, match="source must be a Pool or a Split; got ndarray"):
        apply_protocol(pool.images, "gpq")


def test_pool_checks_its_arrays():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    with pytest.raises(
        ValueError, match=r"^p: expected one int label per image; got labels \(4, 2\)"
    ):
        Pool(images, np.eye(2, dtype=np.uint8)[[0, 1, 0, 1]], name="p")
    with pytest.raises(
        ValueError, match=r"^p: expected one int label per image; got labels \(3,\)"
    ):
        Pool(images, [0, 1, 0], name="p")
    with pytest.raises(ValueError, match=r"^p: images must be uint8 images"):
        Pool(images.astype(np.float32), [0, 1, 0, 1], name="p")
    with pytest.raises(ValueError, match="^p: num_classes=2 but the labels hold class id 3$"):
        Pool(images, [0, 1, 2, 3], num_classes=2, name="p")
    with pytest.raises(ValueError, match="^p: train_count=4 leaves no test images among the 4"):
        Pool(images, [0, 1, 0, 1], name="p", train_count=4)
    pool = Pool(images, np.array([0, 1, 0, 1], np.int32), class_names=["a", "b"])
    assert (
        pool.labels.dtype == np.int64 and pool.num_classes == 2 and pool.class_names == ("a", "b")
    )


def test_digits_pool_gives_the_digits_split():
    pool = digits.load_pool()
    assert len(pool) == 1797 and pool.train_count is None and pool.name == "digits"
    assert pool.class_names == tuple("0123456789") and pool.images.shape == (1797, 32, 32, 3)
    split = apply_protocol(pool, "gpq", query_every=10, labeled_per_class=50)
    reference = digits.load_split()
    for attr in ("x_query", "y_query", "x_labeled", "y_labeled", "x_db", "y_db"):
        np.testing.assert_array_equal(getattr(split, attr), getattr(reference, attr))
    assert split.class_names == reference.class_names and split.name == "digits"
    assert digits.load_pool(image_size=8).images.shape == (1797, 8, 8, 3)


def test_image_files_stay_unread_through_every_protocol(tmp_path):
    labels = np.repeat(np.arange(4), 30)
    paths = [str(tmp_path / "missing" / f"{i}.png") for i in range(len(labels))]  # never read
    pool = Pool(ImageFiles(paths, 16), labels, 4, None, "files", train_count=100)
    for protocol in ("given", "gpq", "cifar10-1", "cifar10-2", "unseen:0.5"):
        split = apply_protocol(
            pool, protocol, seed=1, query_every=6, queries_per_class=5, labeled_per_class=10
        )
        assert split.streamed
        for part, attr in PARTS.items():
            x = getattr(split, attr)
            assert isinstance(x, ImageFiles) and x.shape[1:] == (16, 16, 3)
            assert list(x.paths) == [paths[i] for i in split.index[part]]
        if split.x_db_all is not None:
            assert isinstance(split.x_db_all, ImageFiles)
            assert list(split.x_db_all.paths) == [paths[i] for i in split.index["database_all"]]
