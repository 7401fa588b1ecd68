"""The items' data beside their codes (TensorFlow Similarity's store): ids, labels, sources, the
files' stats and class names, their checks, and the id -> database position look-up.

A position is an item's row in insertion order (the rows of `PQIndex.codes`); an id is what
`search` returns, the position itself unless ids were given to `add` or items were removed: ids
are stable (as faiss' `IndexIDMap.remove_ids`), and the ids the store assigns are never reused.
"""

import collections
import collections.abc

import numpy as np


def read_only(array):
    """A read-only view of `array`."""
    view = array.view()
    view.flags.writeable = False
    return view


def check_class_names(names):
    """`names` as a tuple of unique non-empty str; a ValueError naming `class_names` otherwise."""
    if isinstance(names, np.ndarray) and names.ndim == 1 and names.dtype.kind in "UT":
        names = names.tolist()
    if isinstance(names, (str, bytes)) or not isinstance(names, collections.abc.Sequence):
        raise ValueError(
            f"`class_names` must be a sequence of str. Received: {type(names).__name__}"
        )
    bad = next((name for name in names if not isinstance(name, str)), None)
    if bad is not None:
        raise ValueError(
            f"`class_names` must be str. Received an item of type {type(bad).__name__}"
        )
    if not names:
        raise ValueError("`class_names` must name at least one class")
    names = tuple(
        np.array(names, dtype=str).tolist()
    )  # as a file keeps them (trailing NULs dropped)
    if "" in names:
        raise ValueError(f"`class_names` holds an empty name (position {names.index('')})")
    if len(set(names)) != len(names):
        dups = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        raise ValueError(f"`class_names` holds duplicated names: {dups[:5]}")
    return names


NO_CLASS = -1  # an item without a class among items with classes


def check_labels_fit(labels, names, name):
    """A ValueError naming `name` unless `labels` (N,) are class ids in [0, len(names)) or
    `NO_CLASS` (-1: an item without a class, e.g. from an unlabeled pool), or (N, classes)
    multi-hot with len(names) columns."""
    if labels.ndim == 2:
        if labels.shape[1] != len(names):
            raise ValueError(
                f"`{name}`: the multi-hot labels have {labels.shape[1]} columns but "
                f"`class_names` names {len(names)} classes"
            )
        return
    if labels.dtype.kind not in "biu":
        raise ValueError(
            f"`{name}`: `class_names` need integer class ids as labels. Received labels of "
            f"dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < NO_CLASS or labels.max() >= len(names)):
        raise ValueError(
            f"`{name}`: the labels hold class ids {labels.min()}..{labels.max()} but "
            f"`class_names` names {len(names)} classes (ids 0..{len(names) - 1}, or -1: no "
            "class)"
        )


UNKNOWN_STAT = -1  # a file stat not recorded (an item added by `add`, or from an older file)

Staged = collections.namedtuple("Staged", ["ids", "labels", "sources", "file_stats", "auto"])
Staged.__doc__ = """A checked `ItemStore.stage`: the store's ids, labels, sources and file stats
after the add, and whether the new ids are the ones the store would assign (`auto`)."""


def check_file_stats(file_stats, n):
    """`file_stats` as int64 (n, 2): each file's size in bytes and mtime in ns, -1 where unknown;
    None gives all unknown. A ValueError naming `file_stats` otherwise."""
    if file_stats is None:
        return np.full((n, 2), UNKNOWN_STAT, np.int64)
    stats = np.asarray(file_stats)
    if stats.shape != (n, 2) or (stats.size and not np.issubdtype(stats.dtype, np.integer)):
        raise ValueError(
            f"`file_stats` must be integers ({n}, 2): size and mtime in ns. "
            f"Received: {stats.dtype} {stats.shape}"
        )
    stats = stats.astype(np.int64)
    if stats.size and stats.min() < UNKNOWN_STAT:
        raise ValueError(f"`file_stats` must be >= -1 (unknown). Received: {stats.min()}")
    return stats


class ItemStore:
    """Ids int64 (N,), optional labels (N,) or (N, classes), optional sources unicode (N,) with
    their files' stats int64 (N, 2) (size, mtime in ns; -1 unknown), and optional class names of N
    items, added together (`stage` checks, `commit` applies) and removed together (`remove`).

    Either every add gives ids (labels, sources) or none does; labels must fit the class names.
    Ids the store assigns continue from `next_id`, past every id it held, removed ones included.
    """

    def __init__(self, class_names=None):
        self.reset()
        self.class_names = class_names

    def reset(self):
        """Remove all items (`class_names` stay)."""
        self._ids = np.zeros((0,), np.int64)
        self._labels = None
        self._sources = None
        self._stats = None  # (N, 2) size and mtime_ns of each source's file, kept with sources
        self._default_ids = True  # the ids are 0..N-1, the positions
        self._auto_ids = True  # the ids were assigned by the store: the next is `_next_id`
        self._next_id = 0
        self._order = None  # argsort of custom ids, made on first look-up

    @property
    def ntotal(self):
        return int(self._ids.shape[0])

    @property
    def default_ids(self):
        """Whether the ids are the positions 0..N-1 (no custom ids)."""
        return self._default_ids

    @property
    def auto_ids(self):
        """Whether the store assigns ids (none were given to `add`): the next is `next_id`."""
        return self._auto_ids

    @property
    def next_id(self):
        """The id the next item gets when `auto_ids`: past every id the store assigned."""
        return self._next_id

    def restore_next_id(self, next_id):
        """Make the store assign ids from `next_id` on (a file's), >= every id it holds."""
        next_id = int(next_id)
        if self.ntotal and next_id <= int(self._ids.max()):
            raise ValueError(f"next id {next_id} is not past the ids held (max {self._ids.max()})")
        self._auto_ids, self._next_id = True, next_id

    @property
    def ids(self):
        return read_only(self._ids)

    @property
    def file_stats(self):
        return None if self._stats is None else read_only(self._stats)

    @property
    def labels(self):
        return self._labels

    @property
    def sources(self):
        return None if self._sources is None else read_only(self._sources)

    @property
    def class_names(self):
        return None if self._class_names is None else list(self._class_names)

    @class_names.setter
    def class_names(self, names):
        if names is None:
            self._class_names = None
            return
        names = check_class_names(names)
        if self._labels is not None:
            check_labels_fit(self._labels, names, "class_names")
        self._class_names = names

    # --- adding -----------------------------------------------------------------------------------
    def stage(self, n, ids=None, labels=None, sources=None, file_stats=None):
        """The checked ids, labels, sources and file stats of the store after adding n items ->
        `Staged`; the store is unchanged until `commit`."""
        new_ids = self._new_ids(ids, n)
        auto = self._auto_ids and np.array_equal(
            new_ids, np.arange(self._next_id, self._next_id + n)
        )
        all_labels = self._new_labels(labels, n)
        if labels is not None and self._class_names is not None:
            check_labels_fit(all_labels[self.ntotal :], self._class_names, "labels")
        all_sources = self._new_sources(sources, n)
        if file_stats is not None and all_sources is None:
            raise ValueError("`file_stats` are the stats of the sources' files: give `sources`")
        stats = self._stats
        if all_sources is not None:
            stats = np.zeros((0, 2), np.int64) if stats is None else stats
            stats = np.concatenate([stats, check_file_stats(file_stats, n)])
        return Staged(new_ids, all_labels, all_sources, stats, auto)

    def commit(self, staged):
        """Apply a `stage`."""
        n = self.ntotal
        self._default_ids = self._default_ids and np.array_equal(
            staged.ids, np.arange(n, n + len(staged.ids))
        )
        self._auto_ids = self._auto_ids and staged.auto
        if self._auto_ids:
            self._next_id += len(staged.ids)
        self._ids = np.concatenate([self._ids, staged.ids])
        self._labels = staged.labels
        self._sources = staged.sources
        self._stats = staged.file_stats
        self._order = None

    # --- removing and updating --------------------------------------------------------------------
    def remove(self, positions):
        """Remove the items at `positions` (intp): the others keep their ids and order."""
        keep = np.ones(self.ntotal, bool)
        keep[positions] = False
        self._ids = self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._sources is not None:
            self._sources, self._stats = self._sources[keep], self._stats[keep]
        self._default_ids = self._default_ids and np.array_equal(self._ids, np.arange(self.ntotal))
        self._order = None

    def set_file_stats(self, positions, file_stats):
        """Record the file stats (n, 2) of the items at `positions` (n,)."""
        if self._sources is None:
            raise ValueError("this index has no sources; give `sources` to `add`")
        self._stats[positions] = check_file_stats(file_stats, len(positions))

    def _new_ids(self, ids, n):
        if ids is None:
            if not self._auto_ids:
                raise ValueError("this index has custom ids; give `ids` to every `add`")
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`ids` must be {n} integers (shape ({n},)). Received: {ids.dtype} {ids.shape}"
            )
        return ids.astype(np.int64)

    def _new_labels(self, labels, n):
        """All labels after adding `labels` for n items (None when the store keeps none)."""
        if labels is None:
            if self._labels is not None and n:
                raise ValueError("this index has labels; give `labels` to every `add`")
            return self._labels
        labels = np.asarray(labels)
        if labels.ndim not in (1, 2) or labels.shape[0] != n:
            raise ValueError(
                f"`labels` must have shape ({n},) or ({n}, classes). Received shape: {labels.shape}"
            )
        if self._labels is None:
            if self.ntotal:
                raise ValueError(
                    "items without labels were added before; labels must be given to every add"
                )
            return labels.copy()
        if labels.ndim != self._labels.ndim or labels.shape[1:] != self._labels.shape[1:]:
            raise ValueError(
                f"`labels` shape {labels.shape[1:]} does not match the index's "
                f"{self._labels.shape[1:]}"
            )
        return np.concatenate([self._labels, labels])

    def _new_sources(self, sources, n):
        """All sources after adding `sources` for n items, unicode (N + n,) (None when the store
        keeps none)."""
        if sources is None:
            if self._sources is not None and n:
                raise ValueError("this index has sources; give `sources` to every `add`")
            return self._sources
        if isinstance(sources, (str, bytes)):
            raise ValueError(f"`sources` must be {n} strings (shape ({n},)), not one string")
        if not isinstance(sources, np.ndarray):
            sources = list(sources)
            bad = next((s for s in sources if not isinstance(s, str)), None)
            if bad is not None:
                raise ValueError(
                    f"`sources` must be strings. Received an item of type {type(bad).__name__}"
                )
            sources = np.array(sources, dtype=str) if sources else np.zeros(0, "U1")
        elif sources.dtype.kind == "T":  # NumPy's variable-width StringDType
            sources = sources.astype(str)
        if sources.shape != (n,) or sources.dtype.kind != "U":
            raise ValueError(
                f"`sources` must be {n} strings (shape ({n},)). "
                f"Received: {sources.dtype} {sources.shape}"
            )
        if self._sources is None:
            if self.ntotal:
                raise ValueError(
                    "items without sources were added before; sources must be given to every add"
                )
            return sources.copy()
        return np.concatenate([self._sources, sources])

    # --- ids to items -----------------------------------------------------------------------------
    def positions(self, ids):
        """Database positions of `ids` as `search` returns them (any shape, -1: no result) -> intp
        of the same shape, -1 where the id is -1; a ValueError for an id not in the index."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`ids` must be integer ids as `search` returns them. Received dtype: {ids.dtype}"
            )
        if ids.size and ids.dtype.kind == "u" and ids.max() > np.iinfo(np.int64).max:
            raise ValueError(f"`ids` holds an id not in the index: {ids.max()}")
        ids = ids.astype(np.int64)
        found = ids != -1
        wanted = ids[found]
        if self._default_ids:  # the ids are the positions
            positions = wanted
            known = (wanted >= 0) & (wanted < self.ntotal)
        else:  # custom ids (so ntotal >= 1): binary search in the sorted ids
            if self._order is None:
                self._order = np.argsort(self._ids)
            positions = self._order[
                np.minimum(np.searchsorted(self._ids, wanted, sorter=self._order), self.ntotal - 1)
            ]
            known = self._ids[positions] == wanted
        if not known.all():
            unknown = np.unique(wanted[~known])
            raise ValueError(
                f"`ids` holds {len(unknown)} id(s) not in the index: {unknown[:5].tolist()}"
                f"{' ...' if len(unknown) > 5 else ''}"
            )
        out = np.full(ids.shape, -1, np.intp)
        out[found] = positions
        return out

    def sources_for(self, ids):
        """The sources of `ids` as `search` returns them (int64, any shape) -> unicode array of the
        same shape, "" where the id is -1 (no result)."""
        if self._sources is None:
            raise ValueError("this index has no sources; give `sources` to `add`")
        positions = self.positions(ids)
        out = np.full(positions.shape, "", self._sources.dtype)
        found = positions >= 0
        out[found] = self._sources[positions[found]]
        return out

    def class_names_for(self, ids):
        """The class names of the (int) labels of `ids` as `search` returns them (int64, any shape)
        -> unicode array of the same shape, "" where the id is -1 (no result) or the item has no
        class (label `NO_CLASS`)."""
        if self._class_names is None:
            raise ValueError("this index has no class names; set `class_names`")
        if self._labels is None:
            raise ValueError("this index has no labels; give `labels` to `add`")
        if self._labels.ndim != 1:
            raise ValueError(
                "class_names_for needs int labels (ntotal,); this index's labels are multi-hot "
                f"{self._labels.shape}"
            )
        positions = self.positions(ids)
        names = np.array(self._class_names, dtype=str)
        out = np.full(positions.shape, "", names.dtype)
        found = positions >= 0
        labels = self._labels[positions[found]].astype(np.intp)
        out[found] = np.where(labels >= 0, names[np.maximum(labels, 0)], "")
        return out
