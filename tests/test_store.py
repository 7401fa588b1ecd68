"""The items' ids, sources, labels and class names: their checks and the id look-up."""

import numpy as np
import pytest
from retrieval_fakes import named_index

from gpq_keras.retrieval import PQIndex


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("custom_ids", [False, True])
def test_sources_for_and_class_names_for_map_search_ids(rng, custom_ids):
    ids = np.array([90, 3, 41, 7, 1000, 12, 5, 66, 8, 30, 2, 77]) if custom_ids else None
    index = named_index(rng, ids)
    queries = rng.standard_normal((3, 12)).astype(np.float32)
    _, found = index.search(queries, 15)  # 12 items: the last 3 columns are -1
    assert np.all(found[:, 12:] == -1)
    positions = found[:, :12] if ids is None else np.searchsorted(np.sort(ids), found[:, :12])
    if ids is not None:
        positions = np.argsort(ids)[positions]
    sources = index.sources_for(found)
    names = index.class_names_for(found)
    assert sources.shape == names.shape == (3, 15) and sources.dtype.kind == names.dtype.kind == "U"
    np.testing.assert_array_equal(
        sources[:, :12], np.char.add("images/", np.char.zfill(positions.astype(str), 3)) + ".png"
    )
    np.testing.assert_array_equal(sources[:, 12:], "")
    np.testing.assert_array_equal(names[:, :12], np.array(["cat", "dog", "bird"])[positions % 3])
    np.testing.assert_array_equal(names[:, 12:], "")
    some = index.ids[[11, 0]]
    assert index.sources_for(some).tolist() == ["images/011.png", "images/000.png"]
    assert index.class_names_for(some).tolist() == ["bird", "cat"]
    unknown = 4 if custom_ids else 12
    with pytest.raises(ValueError, match=rf"`ids` holds 1 id\(s\) not in the index: \[{unknown}\]"):
        index.sources_for([[index.ids[0], unknown]])
    with pytest.raises(ValueError, match="not in the index"):
        index.class_names_for([-2])
    with pytest.raises(ValueError, match="`ids` must be integer"):
        index.sources_for([0.5])


def test_sources_for_and_class_names_for_need_what_they_map(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    plain = PQIndex(z, 4).add(np.zeros((3, 4), np.uint8), labels=np.arange(3))
    with pytest.raises(ValueError, match="no sources"):
        plain.sources_for([0])
    with pytest.raises(ValueError, match="no class names"):
        plain.class_names_for([0])
    unlabeled = PQIndex(z, 4, class_names=["a"]).add(np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="no labels"):
        unlabeled.class_names_for([0])
    multi = PQIndex(z, 4, class_names=["a", "b"]).add(
        np.zeros((3, 4), np.uint8), labels=np.eye(3, 2, dtype=bool)
    )
    with pytest.raises(ValueError, match="multi-hot"):
        multi.class_names_for([0])


def test_every_add_gives_sources_or_none_does(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    codes = np.zeros((2, 4), np.uint8)
    with_sources = PQIndex(z, 4).add(codes, sources=["a", "b"])
    with pytest.raises(ValueError, match="this index has sources; give `sources` to every `add`"):
        with_sources.add(codes)
    without = PQIndex(z, 4).add(codes)
    with pytest.raises(ValueError, match="items without sources were added before"):
        without.add(codes, sources=["a", "b"])
    with pytest.raises(ValueError, match=r"`sources` must be 2 strings \(shape \(2,\)\)"):
        PQIndex(z, 4).add(codes, sources=["a", "b", "c"])
    with pytest.raises(ValueError, match="`sources` must be strings"):
        PQIndex(z, 4).add(codes, sources=["a", 3])
    with pytest.raises(ValueError, match="not one string"):
        PQIndex(z, 4).add(codes, sources="ab")
    assert (
        with_sources.ntotal == 2 and without.ntotal == 2 and without.sources is None
    )  # failed adds add nothing
    assert with_sources.sources.tolist() == ["a", "b"]


def test_class_names_are_validated(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    codes = np.zeros((3, 4), np.uint8)
    with pytest.raises(ValueError, match=r"`class_names` holds duplicated names: \['a'\]"):
        PQIndex(z, 4, class_names=["a", "b", "a"])
    with pytest.raises(ValueError, match="`class_names` holds an empty name"):
        PQIndex(z, 4, class_names=["a", ""])
    with pytest.raises(ValueError, match="`class_names` must be a sequence of str"):
        PQIndex(z, 4, class_names="abc")
    with pytest.raises(ValueError, match="`class_names` must be str"):
        PQIndex(z, 4, class_names=["a", 1])
    index = PQIndex(z, 4).add(codes, labels=np.array([0, 2, 1]))
    with pytest.raises(
        ValueError,
        match=r"`class_names`: the labels hold class ids 0..2 but `class_names` "
        r"names 2 classes",
    ):
        index.class_names = ["a", "b"]
    assert index.class_names is None  # a refused value changes nothing
    index.class_names = ("a", "b", "c")
    assert index.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"`labels`: the labels hold class ids 3..3"):
        index.add(codes[:1], labels=[3])
    with pytest.raises(ValueError, match=r"`labels`: the labels hold class ids -2..-2"):
        index.add(codes[:1], labels=[-2])
    assert index.ntotal == 3
    index.add(codes[:1], labels=[-1])  # NO_CLASS: an item without a class (an unlabeled file)
    assert index.class_names_for(np.array([[3, 0]])).tolist() == [["", "a"]]
    index = PQIndex(z, 4).add(codes, labels=np.array([0, 2, 1]))
    index.class_names = ("a", "b", "c")
    index.class_names = None
    assert index.add(codes[:1], labels=[7]).ntotal == 4  # without class names any label goes
    multi = PQIndex(z, 4).add(codes, labels=np.ones((3, 4), np.uint8))
    with pytest.raises(
        ValueError, match=r"multi-hot labels have 4 columns but `class_names` names 3"
    ):
        multi.class_names = ["a", "b", "c"]
    multi.class_names = ["a", "b", "c", "d"]
    named = PQIndex(z, 4, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`labels`: the multi-hot labels have 2 columns"):
        named.add(codes, labels=np.ones((3, 2), np.uint8))
    with pytest.raises(ValueError, match="integer class ids"):
        named.add(codes, labels=np.array(["x", "y", "z"]))


def test_from_model_takes_class_names(tiny_config):
    from gpq_keras.model import GPQ

    index = PQIndex.from_model(GPQ(tiny_config), class_names=["x", "y"])
    assert index.class_names == ["x", "y"]
    with pytest.raises(ValueError, match="duplicated"):
        PQIndex.from_model(GPQ(tiny_config), class_names=["x", "x"])
