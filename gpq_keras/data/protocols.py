"""Protocols: which images of a collection are the queries, the labeled and unlabeled training
sets and the retrieval database.

```python
pool = cifar10.read_pool("cifar10/")  # 60,000 labeled images in the original's order
split = apply_protocol(pool, "cifar10-1", seed=0)  # 1,000 / 5,000 / 59,000 (DeepHash-pytorch)
split = apply_protocol(pool, "unseen:0.75", seed=3)  # train on 8 classes, search the other 2
```

- `given` (a folder's default): in each class the first `query_per_class` images are queries,
  all the others labeled and the database (= unlabeled).
- `gpq` (the paper): every `query_every`-th image sorted by class is a query, `labeled_per_class`
  per class labeled, the rest unlabeled = database (CIFAR-10: 1,000 / 5,000 / 54,000).
- `cifar10-1` (DeepHash-pytorch): per class a seeded 100 queries and 500 labeled; the database
  is all but the queries (1,000 / 5,000 / 59,000).
- `cifar10-2` (DeepHash-pytorch): the source's 10,000 test images are the queries, its 50,000
  training images the labeled set and the database.
- `unseen[:FRACTION]` (Sablayrolles et al. 2017): a seeded FRACTION (0.75) of the classes is seen;
  labeled: the seen classes' labeled images; queries and database: the unseen classes' (the
  unlabeled set is the unseen database), from a base split's parts.

A `Pool` is one labeled collection in a fixed order; `Split.index` gives each part's positions in
it, and every split records its `protocol` and `seed`. Images that are `ImageFiles` stay files:
a protocol only indexes them, it never decodes one. `unseen` is Sablayrolles et al. 2017 ("How
should we evaluate supervised hashing?"): retrieval of classes never seen in training; it also
keeps the database of every class (`x_db_all`, for unseen@all). A pool of embeddings (float32
(N, D): an `npz:` without `x_query`, as `gpq embed` writes) is split the same way.
"""

import dataclasses
import math

import numpy as np

from gpq_keras.data.split import Split, check_count, check_inputs, check_labels, protocol_split

__all__ = [
    "PROTOCOLS",
    "PROTOCOL_FORMS",
    "Pool",
    "apply_protocol",
    "deephash_split",
    "given_split",
    "gpq_split",
    "parse_protocol",
    "unseen_split",
]

PROTOCOLS = ("given", "gpq", "unseen", "cifar10-1", "cifar10-2")
PROTOCOL_FORMS = ("given", "gpq", "unseen[:FRACTION]", "cifar10-1", "cifar10-2")
UNSEEN_FRACTION = 0.75  # of the classes seen in training (Sablayrolles et al. 2017)
DEEPHASH = ("cifar10-1", "cifar10-2")
POOL_PROTOCOLS = ("gpq", "cifar10-1", "cifar10-2")  # they need a Pool, not a source's own parts
OPTIONS = (
    "query_every",
    "labeled_per_class",
    "query_per_class",
    "queries_per_class",
    "fraction",
    "keep_unlabeled",
    "base",
)


def _bad_protocol(text, why):
    return ValueError(
        f"bad protocol {text!r}: {why}; accepted: {', '.join(PROTOCOL_FORMS)} "
        f"(0 < FRACTION < 1, default {UNSEEN_FRACTION})"
    )


def check_fraction(fraction, where="unseen"):
    """`fraction` as a float in (0, 1); a one-line ValueError otherwise."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float, np.integer, np.floating))
        or not 0 < fraction < 1
    ):
        raise ValueError(
            f"{where}: the fraction of seen classes must be a number in (0, 1); received "
            f"fraction={fraction!r}"
        )
    return float(fraction)


def parse_protocol(text):
    """A protocol as written on the command line -> (name, fraction or None).

    "gpq" -> ("gpq", None); "unseen" -> ("unseen", None) (the default fraction, 0.75, is the
    caller's); "unseen:0.5" -> ("unseen", 0.5). Names are case-insensitive, blanks around them
    ignored. Raises ValueError (one line naming the accepted forms) for an unknown name, a
    fraction on another protocol, or a fraction that is not a number in (0, 1).
    """
    if not isinstance(text, str):
        raise _bad_protocol(text, f"expected a str, not {type(text).__name__}")
    name, sep, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in PROTOCOLS:
        raise _bad_protocol(text, f"unknown protocol {name!r}")
    if not sep:
        return name, None
    if name != "unseen":
        raise _bad_protocol(text, f"{name} takes no fraction")
    try:
        fraction = float(rest.strip())
    except ValueError:
        raise _bad_protocol(text, f"the fraction {rest.strip()!r} is not a number") from None
    if not (math.isfinite(fraction) and 0 < fraction < 1):
        raise _bad_protocol(text, f"the fraction {rest.strip()} is not in (0, 1)")
    return name, fraction


@dataclasses.dataclass
class Pool:
    """One labeled collection in a fixed order: `Split.index` values are positions in it.

    `images`: uint8 (N, H, W, 3), `ImageFiles` (kept unread) or embeddings, float (N, D), kept as
    float32 (`gpq_keras.data.split.check_inputs`); `labels`: int class ids (N,)
    (int64); `num_classes` (default the largest id + 1); `class_names` in id order, or None;
    `name` (in errors and on the splits); `train_count`: the first `train_count` images are the
    source's own training images (CIFAR-10's 50,000 data_batch images, the other 10,000 its test
    images), None when the source has no such division.

    Raises ValueError (one line naming the pool) for images that are not uint8 RGB or embeddings
    that are not finite float (N, D), labels that are not one int id per image, ids outside
    `num_classes`, or a `train_count` outside [1, N).
    """

    images: object
    labels: np.ndarray
    num_classes: int = None
    class_names: tuple = None
    name: str = "data"
    train_count: int = None

    def __post_init__(self):
        self.images = check_inputs(self.images, f"{self.name}: images")
        labels = check_labels(self.labels, f"{self.name}: labels")
        if labels.ndim != 1 or len(labels) != len(self.images):
            raise ValueError(
                f"{self.name}: expected one int label per image; got labels {labels.shape} "
                f"for images {tuple(self.images.shape)}"
            )
        if not len(labels):
            raise ValueError(f"{self.name}: no images in the pool")
        self.labels = labels.astype(np.int64)
        needed = int(self.labels.max()) + 1
        if self.num_classes is None:
            self.num_classes = needed
        elif check_count("num_classes", self.num_classes, self.name) < needed:
            raise ValueError(
                f"{self.name}: num_classes={self.num_classes} but the labels hold class id "
                f"{needed - 1}"
            )
        self.num_classes = int(self.num_classes)
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
        if self.train_count is not None:
            count = check_count("train_count", self.train_count, self.name)
            if count >= len(labels):
                raise ValueError(
                    f"{self.name}: train_count={count} leaves no test images among the "
                    f"{len(labels)} of the pool"
                )
            self.train_count = count

    def __len__(self):
        return len(self.labels)

    def counts(self):
        """Images per class id, int64 (num_classes,)."""
        return np.bincount(self.labels, minlength=self.num_classes)


def _take(x, positions):
    """`x[positions]`: a slice (an array's view, no copy) when the positions are one run."""
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
        return x[int(positions[0]) : int(positions[-1]) + 1]  # sorted and distinct: a run
    return x[positions]


def _part(pool, positions):
    """(images, labels) of the pool at sorted int64 `positions` (an `ImageFiles` stays
    unread)."""
    return _take(pool.images, positions), _take(pool.labels, positions)


def _rank_in_class(labels):
    """Each image's rank among its class's images, in order -> int64 (N,)."""
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
    return rank


def _split(pool, protocol, seed, query, labeled, database, unlabeled=None):
    """The `Split` of these pool positions (int64, each in pool order)."""
    unlabeled = database if unlabeled is None else unlabeled
    x_db, y_db = _part(pool, database)
    if labeled is database:
        x_labeled, y_labeled = x_db, y_db
    else:
        x_labeled, y_labeled = _part(pool, labeled)
    x_query, y_query = (None, None) if query is None else _part(pool, query)
    index = {"labeled": labeled, "unlabeled": unlabeled, "database": database}
    if query is not None:
        index["query"] = query
    return Split(
        x_query=x_query,
        y_query=y_query,
        x_db=x_db,
        y_db=y_db,
        x_labeled=x_labeled,
        y_labeled=y_labeled,
        x_unlabeled=x_db if unlabeled is database else _take(pool.images, unlabeled),
        num_classes=pool.num_classes,
        name=pool.name,
        class_names=pool.class_names,
        protocol=protocol,
        seed=seed,
        index={part: np.asarray(index[part], np.int64) for part in sorted(index)},
        pooled=True,
    )


def default_query_per_class(pool):
    """A tenth of the smallest class with images (at least 1): `given_split`'s default."""
    counts = pool.counts()
    return max(1, int(counts[counts > 0].min()) // 10)


def given_split(pool, query_per_class=None):
    """A folder's own parts: in each class the first `query_per_class` images (pool order) are
    queries; all the others are labeled and also the database (`x_db is x_labeled`) and the
    unlabeled set. Every part keeps the pool's order.

    `query_per_class` defaults to a tenth of the smallest class (at least 1); 0: no queries
    (`x_query` None, a split for training only). A class of at most `query_per_class` images gives
    all but one of them as queries (a class of one image: none), so that every class keeps a
    labeled image.
    """
    if query_per_class is None:
        query_per_class = default_query_per_class(pool)
    elif not (
        isinstance(query_per_class, (int, np.integer))
        and not isinstance(query_per_class, bool)
        and query_per_class == 0
    ):
        query_per_class = check_count("query_per_class", query_per_class, pool.name)
    query_per_class = int(query_per_class)
    counts = pool.counts()
    # a class too small for its queries keeps at least one labeled image: it gives fewer queries
    quota = np.minimum(query_per_class, np.maximum(counts - 1, 0))
    is_query = _rank_in_class(pool.labels) < quota[pool.labels]
    rest = np.flatnonzero(~is_query)
    query = np.flatnonzero(is_query) if is_query.any() else None
    return _split(pool, "given", None, query, rest, rest)


def gpq_split(pool, query_every=60, labeled_per_class=500):
    """The paper's protocol (`gpq_keras.data.split.protocol_split`) on the pool: every
    `query_every`-th image sorted by class is a query, `labeled_per_class` per class of the rest
    labeled, the others unlabeled and the database (CIFAR-10: 1,000 / 5,000 / 54,000)."""
    split = protocol_split(
        pool.images,
        pool.labels,
        query_every=query_every,
        labeled_per_class=labeled_per_class,
        name=pool.name,
    )
    split.num_classes, split.class_names = pool.num_classes, pool.class_names
    return split


def deephash_split(pool, which, seed=0, queries_per_class=100, labeled_per_class=500):
    """DeepHash-pytorch's CIFAR-10 protocols.

    "cifar10-1": in each class, a seeded random `queries_per_class` images are queries and another
    `labeled_per_class` labeled; the database is every image but the queries (CIFAR-10: 1,000
    queries, 5,000 labeled, 59,000 database, the labeled among them). "cifar10-2": the source's
    test images (the pool from `train_count` on: 10,000) are the queries, its training images
    (50,000) the labeled set and the database. The unlabeled set is the database in both; parts
    keep the pool's order.

    Raises ValueError (one line, with the counts) for a class with fewer than
    `queries_per_class + labeled_per_class` images (cifar10-1) and for a pool without a
    train/test division (cifar10-2: `train_count` None).
    """
    if which not in DEEPHASH:
        raise ValueError(
            f"deephash_split: which must be one of {', '.join(DEEPHASH)}; got {which!r}"
        )
    if which == "cifar10-2":
        if pool.train_count is None:
            raise ValueError(
                f"{pool.name}: cifar10-2 takes the source's test images as queries and its "
                f"training images as labeled set and database; this pool of {len(pool)} images "
                f"has no train/test division (train_count=None; CIFAR-10 has 50,000 + 10,000)"
            )
        train = np.arange(pool.train_count, dtype=np.int64)
        test = np.arange(pool.train_count, len(pool), dtype=np.int64)
        return _split(pool, which, seed, test, train, train)
    queries_per_class = check_count("queries_per_class", queries_per_class, pool.name)
    labeled_per_class = check_count("labeled_per_class", labeled_per_class, pool.name)
    counts, needed = pool.counts(), queries_per_class + labeled_per_class
    short = np.flatnonzero((counts > 0) & (counts < needed))
    if len(short):
        c = short[0]
        raise ValueError(
            f"{pool.name}: too few images for cifar10-1 (queries_per_class={queries_per_class}, "
            f"labeled_per_class={labeled_per_class}): class {c} has {counts[c]} images; every "
            f"class needs at least {needed} ({len(pool)} images in all)"
        )
    rng = np.random.default_rng(seed)
    is_query, is_labeled = np.zeros(len(pool), bool), np.zeros(len(pool), bool)
    for c in np.flatnonzero(counts):  # class by class, in id order: a function of the seed
        chosen = rng.permutation(np.flatnonzero(pool.labels == c))
        is_query[chosen[:queries_per_class]] = True
        is_labeled[chosen[queries_per_class:needed]] = True
    database = np.flatnonzero(~is_query)
    return _split(pool, which, seed, np.flatnonzero(is_query), np.flatnonzero(is_labeled), database)


def _within(labels, classes):
    """Rows whose labels all lie in the bool mask `classes` (num_classes,): an int id in it, or a
    multi-hot row with at least one label and none outside it -> bool (N,)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return classes[labels]
    hot = labels != 0
    return hot.any(1) & ~(hot & ~classes).any(1)


def seen_class_count(num_classes, fraction):
    """Classes seen in training: `fraction * num_classes` rounded half up (0.75 of 10: 8)."""
    return int(math.floor(fraction * num_classes + 0.5))


def unseen_split(split, fraction=UNSEEN_FRACTION, seed=0, keep_unlabeled=False):
    """Retrieval of unseen classes (Sablayrolles et al. 2017) from a split's parts.

    A permutation of the `split.num_classes` classes drawn from `seed` makes its first
    `fraction` (rounded half up) the seen classes. The labeled set keeps the labeled rows whose
    labels are all seen; the queries and the database the rows whose labels are all unseen
    (multi-hot: a row with labels, all of them seen, or all unseen; other rows drop out). The
    unlabeled set is the unseen database (transduction), or, with `keep_unlabeled` (the user's
    own unlabeled pool), the split's. `x_db_all`, `y_db_all` are the split's whole database (every
    class: unseen@all); `seen_classes`, `unseen_classes` sorted tuples of ids; `index` follows
    the rows (its "database_all" is the database's). Image files stay unread.

    Raises ValueError (one line, with the counts) for a fraction outside (0, 1), fewer than 2
    classes on either side, or a part left without images.
    """
    fraction = check_fraction(fraction, f"{split.name}: unseen")
    num_classes = int(split.num_classes)
    seen_count = seen_class_count(num_classes, fraction)
    if seen_count < 2 or num_classes - seen_count < 2:
        raise ValueError(
            f"{split.name}: unseen:{fraction:g} splits {num_classes} classes into {seen_count} "
            f"seen and {num_classes - seen_count} unseen; each side needs at least 2 classes"
        )
    order = np.random.default_rng(seed).permutation(num_classes)
    seen = np.zeros(num_classes, bool)
    seen[order[:seen_count]] = True
    rows = {}
    if split.x_labeled is not None:
        rows["labeled"] = _within(split.y_labeled, seen)
    if split.x_query is not None:
        rows["query"] = _within(split.y_query, ~seen)
    rows["database"] = _within(split.y_db, ~seen)
    empty = [part for part, mask in rows.items() if not mask.any()]
    if empty:
        sizes = ", ".join(f"{int(mask.sum())} of {len(mask)} {part}" for part, mask in rows.items())
        raise ValueError(
            f"{split.name}: unseen:{fraction:g} (seed={seed}) leaves no {' and no '.join(empty)} "
            f"images ({sizes}; seen classes {np.flatnonzero(seen).tolist()}, unseen "
            f"{np.flatnonzero(~seen).tolist()})"
        )
    parts = {"labeled": "labeled", "query": "query", "database": "db"}
    new = {}
    for part, mask in rows.items():
        x, y = getattr(split, f"x_{parts[part]}"), getattr(split, f"y_{parts[part]}")
        new[f"x_{parts[part]}"], new[f"y_{parts[part]}"] = x[mask], np.asarray(y)[mask]
    index = dict(split.index)
    for part, mask in rows.items():
        if part in index and len(index[part]) == len(mask):
            index[part] = np.asarray(index[part], np.int64)[mask]
    if "database" in split.index:
        index["database_all"] = np.asarray(split.index["database"], np.int64)
    if keep_unlabeled:
        x_unlabeled = split.x_unlabeled
    else:
        x_unlabeled = new["x_db"]
        if "database" in index:
            index["unlabeled"] = index["database"]
        else:
            index.pop("unlabeled", None)
    return dataclasses.replace(
        split,
        **new,
        x_unlabeled=x_unlabeled,
        protocol="unseen",
        seed=seed,
        index=index,
        seen_classes=tuple(int(c) for c in np.flatnonzero(seen)),
        unseen_classes=tuple(int(c) for c in np.flatnonzero(~seen)),
        x_db_all=split.x_db,
        y_db_all=split.y_db,
    )


def apply_protocol(source, protocol="given", seed=0, **options):
    """The `Split` a protocol makes of a source: a `Pool` (digits, cifar10, tfds, folder) or a
    `Split` of the source's own parts (list, nuswide, npz), to which only "given" (those parts as
    they are) and "unseen" apply.

    `protocol`: a name of `PROTOCOLS` or "unseen:FRACTION" (`parse_protocol`). Options, each
    used by the protocols it belongs to and ignored by the others, None meaning its default:
    `query_per_class` (given), `query_every` (60) and `labeled_per_class` (500) (gpq),
    `queries_per_class` (100) and `labeled_per_class` (500) (cifar10-1); for unseen `fraction`
    (0.75; the one in the protocol's text wins only when they agree), `keep_unlabeled` and, on a
    Pool, `base`: the protocol of the split the classes are then divided in (default "given").
    The split records `protocol` (the name, e.g. "unseen") and `seed`.

    Raises ValueError (one line) for a protocol a Split source cannot take, or data too small
    for it; TypeError for an unknown option.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"apply_protocol: unknown option {unknown[0]!r}; accepted: {', '.join(OPTIONS)}"
        )
    options = {k: v for k, v in options.items() if v is not None}
    name, fraction = parse_protocol(protocol)
    if name == "unseen":
        if fraction is None:
            fraction = options.get("fraction", UNSEEN_FRACTION)
        elif "fraction" in options and options["fraction"] != fraction:
            raise ValueError(
                f"apply_protocol: protocol {protocol!r} and fraction={options['fraction']!r} "
                "disagree; give the fraction once"
            )
        if isinstance(source, Pool):
            base = options.get("base", "given")
            base_name, _ = parse_protocol(base)
            if base_name == "unseen":
                raise ValueError(f"apply_protocol: base must not be unseen; received {base!r}")
            rest = {k: v for k, v in options.items() if k not in ("base", "fraction")}
            source = apply_protocol(source, base_name, seed, **rest)
        split = unseen_split(source, fraction, seed, bool(options.get("keep_unlabeled", False)))
    elif isinstance(source, Split):
        if name != "given":
            need = (
                "one pool of labeled images (digits, cifar10:, tfds:, folder:)"
                if name != "cifar10-2"
                else "one pool of labeled images with the source's train/test division "
                "(cifar10:, tfds:cifar10)"
            )
            raise ValueError(
                f"protocol {name} splits {need}; {source.name} brings its own query, database "
                "and training parts (use given or unseen)"
            )
        split = dataclasses.replace(source)
    elif not isinstance(source, Pool):
        raise TypeError(
            f"apply_protocol: source must be a Pool or a Split; got {type(source).__name__}"
        )
    elif name == "given":
        split = given_split(source, options.get("query_per_class"))
    elif name == "gpq":
        split = gpq_split(
            source, options.get("query_every", 60), options.get("labeled_per_class", 500)
        )
    else:
        split = deephash_split(
            source,
            name,
            seed,
            options.get("queries_per_class", 100),
            options.get("labeled_per_class", 500),
        )
    split.protocol, split.seed = name, seed
    return split
