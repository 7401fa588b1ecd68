"""Search your own images: `gpq index build --images`, `gpq index add`, `gpq search --image`, and
`gpq index search` on the faiss file of `--faiss`, on a folder of generated PNG and JPEG files of
mixed sizes."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpq_keras import GPQ, cli
from gpq_keras.config import GPQConfig
from gpq_keras.data.images import decode_images
from gpq_keras.data.user import list_images
from gpq_keras.retrieval import PQIndex

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

CONFIG = GPQConfig(
    num_subspaces=3,
    num_codewords=8,
    subspace_dim=4,
    num_classes=3,
    image_shape=(16, 16, 3),
    filters=(4, 8, 8, 8),
)
COLOURS = {"blue": (30, 40, 210), "green": (30, 200, 40), "red": (220, 30, 30)}


def write_images(folder, per_class, rng):
    for name, colour in COLOURS.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            height, width = rng.integers(10, 48, 2)  # any size: resized to the model's input
            image = np.clip(
                np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255
            ).astype(np.uint8)
            encode, ext = (tf.io.encode_png, "png") if i % 2 else (tf.io.encode_jpeg, "jpg")
            tf.io.write_file(str(folder / name / f"{folder.name}_{i}.{ext}"), encode(image))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    write_images(root / "photos", 4, rng)
    write_images(root / "more", 2, rng)
    for name, seed in (("a", 0), ("b", 1)):
        keras.utils.set_random_seed(seed)
        GPQ(CONFIG).save(root / f"{name}.keras")
    return root


def _expected_index(model, folders):
    """The index the CLI should build, made in Python: the same files encoded one folder after
    another."""
    index = PQIndex.from_model(model)
    for folder in folders:
        paths, labels, _, _ = list_images(folder)
        index.add(model.encode(decode_images(paths, (16, 16))), sources=paths, labels=labels)
    return index


def test_build_add_and_search_return_the_right_files(files, capsys):
    model_path, index_path = str(files / "a.keras"), str(files / "index.npz")
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                model_path,
                "--images",
                str(files / "photos"),
                "--output",
                index_path,
            ]
        )
        == 0
    )
    built = PQIndex.load(index_path)
    assert built.ntotal == 12 and built.class_names == ["blue", "green", "red"]
    assert (
        cli.main(
            [
                "index",
                "add",
                "--model",
                model_path,
                "--index",
                index_path,
                "--images",
                str(files / "more"),
            ]
        )
        == 0
    )
    index = PQIndex.load(index_path)
    model = keras.models.load_model(model_path)
    want = _expected_index(model, [files / "photos", files / "more"])
    np.testing.assert_array_equal(index.codes, want.codes)
    np.testing.assert_array_equal(index.sources, want.sources)
    np.testing.assert_array_equal(index.labels, want.labels)
    assert index.sources[0].endswith(os.path.join("photos", "blue", "photos_0.jpg"))

    query = str(files / "photos" / "red" / "photos_1.png")
    capsys.readouterr()
    assert (
        cli.main(
            [
                "search",
                "--model",
                model_path,
                "--index",
                index_path,
                "--image",
                query,
                "--image",
                str(files / "more" / "green" / "more_0.jpg"),
                "-k",
                "50",
                "--json",
                str(files / "hits.json"),
                "--figure",
                str(files / "hits.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "-k 50 capped at the 18 items" in out.err
    report = json.loads((files / "hits.json").read_text())
    assert report["k"] == 18 and [q["query"] for q in report["queries"]][0] == query
    distances, ids = want.search(model.encode(decode_images([query], (16, 16))), 18)
    hits = report["queries"][0]["results"]
    assert [h["id"] for h in hits] == ids[0].tolist()
    np.testing.assert_allclose([h["distance"] for h in hits], distances[0], rtol=1e-6)
    assert [h["source"] for h in hits] == [want.sources[i] for i in ids[0]]
    assert [h["class"] for h in hits] == [index.class_names[want.labels[i]] for i in ids[0]]
    best = [h["source"] for h in hits if h["distance"] == hits[0]["distance"]]
    assert query in best  # the query's own file is among the nearest
    assert f"{hits[0]['distance']:8.4f}" in out.out and hits[0]["source"] in out.out
    assert (files / "hits.png").stat().st_size > 10_000


def test_another_models_index_and_damaged_queries_are_refused(files, capsys):
    index_path = str(files / "a_index.npz")
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                str(files / "a.keras"),
                "--images",
                str(files / "photos"),
                "--output",
                index_path,
            ]
        )
        == 0
    )
    capsys.readouterr()
    query = str(files / "photos" / "red" / "photos_1.png")
    assert (
        cli.main(
            ["search", "--model", str(files / "b.keras"), "--index", index_path, "--image", query]
        )
        == 2
    )
    assert "the index was built with another model" in capsys.readouterr().err
    bad = files / "not_an_image.png"
    bad.write_bytes(b"hello")
    assert (
        cli.main(
            [
                "search",
                "--model",
                str(files / "a.keras"),
                "--index",
                index_path,
                "--image",
                str(bad),
            ]
        )
        == 2
    )
    assert f"{bad}: not a decodable image" in capsys.readouterr().err
    query_bytes = open(query, "rb").read()
    assert (
        cli.main(
            [
                "search",
                "--model",
                str(files / "a.keras"),
                "--index",
                index_path,
                "--image",
                query,
                "--json",
                query,
            ]
        )
        == 2
    )
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert open(query, "rb").read() == query_bytes
    before = (files / "a_index.npz").read_bytes()
    assert (
        cli.main(
            [
                "index",
                "add",
                "--model",
                str(files / "b.keras"),
                "--index",
                index_path,
                "--images",
                str(files / "more"),
            ]
        )
        == 2
    )
    assert (files / "a_index.npz").read_bytes() == before


def test_glob_without_classes_and_faiss_file_search(files, capsys):
    pytest.importorskip("faiss")  # requirements.txt installs it; the [faiss] extra elsewhere
    model_path = str(files / "a.keras")
    pattern = str(files / "photos" / "**" / "*.png")
    index_path, faiss_path = str(files / "glob.npz"), str(files / "glob.faiss")
    for output, extra in ((index_path, []), (faiss_path, ["--faiss"])):
        assert (
            cli.main(
                [
                    "index",
                    "build",
                    "--model",
                    model_path,
                    "--images",
                    pattern,
                    "--output",
                    output,
                    *extra,
                ]
            )
            == 0
        )
    index = PQIndex.load(index_path)
    assert (
        index.ntotal == 6
        and index.labels is None
        and all(s.endswith(".png") for s in index.sources)
    )
    data = files / "queries.npz"
    images = decode_images(list(index.sources[:3]), (16, 16))
    np.savez(data, x_query=images, y_query=np.zeros(3, int), x_db=images, y_db=np.zeros(3, int))
    results = {}
    for path in (index_path, faiss_path):
        out = files / f"{os.path.basename(path)}.hits.npz"
        assert (
            cli.main(
                [
                    "index",
                    "search",
                    "--model",
                    model_path,
                    "--index",
                    path,
                    "--data",
                    f"npz:{data}",
                    "-k",
                    "6",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        results[path] = np.load(out)
    np.testing.assert_allclose(
        results[faiss_path]["distances"], results[index_path]["distances"], atol=1e-5
    )
    for q in range(3):  # the same items at the same distances (faiss orders ties its own way)
        got = sorted(
            zip(np.round(results[faiss_path]["distances"][q], 4), results[faiss_path]["ids"][q])
        )
        want = sorted(
            zip(np.round(results[index_path]["distances"][q], 4), results[index_path]["ids"][q])
        )
        assert got == want
    capsys.readouterr()
    assert (
        cli.main(
            [
                "index",
                "search",
                "--model",
                str(files / "b.keras"),
                "--index",
                faiss_path,
                "--data",
                f"npz:{data}",
            ]
        )
        == 2
    )
    assert "was not built with this model" in capsys.readouterr().err
