"""The ranked-list figure (2x8 grid, green/red frames, de-normalised colours) and the PR plot."""

import os

import matplotlib.image
import numpy as np
import pytest

from gpq_keras import viz


def _solid(color, size=16):
    return np.broadcast_to(np.array(color, np.uint8), (size, size, 3)).copy()


def _count(pixels, color, tol=0.02):
    return int(np.all(np.abs(pixels[..., :3] - np.array(color) / 255.0) < tol, axis=-1).sum())


def test_ranked_list_figure_grid_frames_and_colours(tmp_path):
    query = _solid((40, 90, 200))
    results = np.stack([_solid((200, 200, 40))] * 15)
    relevant = np.array([True] * 5 + [False] * 10)
    path = viz.plot_ranked_list(query, results, relevant, tmp_path / "ranked.png")
    assert os.listdir(tmp_path) == ["ranked.png"]  # written atomically, nothing left behind
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (360, 1280)  # figsize (12.8, 3.6) at dpi 100
    assert _count(pixels, (40, 90, 200)) > 1000  # the query is drawn in its own colour
    green, red = _count(pixels, (0, 192, 0)), _count(pixels, (224, 0, 0))
    assert green > 200 and red > 2 * green * 0.9  # 5 green frames, 10 red ones
    # The grid: 16 cells, the query in the first one (top-left) and the results filling 2 rows of 8.
    fig = viz.plot_ranked_list(query, results, relevant)
    axes = fig.get_axes()
    assert len(axes) == 16
    # Relevance reads without colour: a check mark or a cross in every title.
    assert [ax.get_title() for ax in axes] == ["Query"] + [
        f"Rank {i} \u2713" for i in range(1, 6)
    ] + [f"Rank {i} \u2717" for i in range(6, 16)]
    assert [ax.get_title() for ax in viz.plot_ranked_list(query, results).get_axes()] == [
        "Query"
    ] + [f"Rank {i}" for i in range(1, 16)]
    positions = sorted(
        (round(-ax.get_position().y0, 2), round(ax.get_position().x0, 2)) for ax in axes
    )
    assert len({p[0] for p in positions}) == 2 and len({p[1] for p in positions}) == 8
    frames = [ax.spines["left"].get_edgecolor() for ax in axes[1:]]
    assert all(np.allclose(c[:3], (0, 192 / 255, 0)) for c in frames[:5])
    assert all(np.allclose(c[:3], (224 / 255, 0, 0)) for c in frames[5:])
    assert not axes[0].spines["left"].get_visible()  # the query has no frame


def test_normalised_float_images_are_denormalised(tmp_path):
    from gpq_keras.image_converter import CHANNEL_MEAN, CHANNEL_STD

    query = _solid((180, 60, 20))
    normalised = (query.astype(np.float32) - CHANNEL_MEAN) / CHANNEL_STD
    results = np.stack([normalised] * 3)
    path = viz.plot_ranked_list(normalised, results, [True, False, True], tmp_path / "f.png")
    pixels = matplotlib.image.imread(path)
    assert _count(pixels, (180, 60, 20)) > 4 * 1000  # query and 3 results, colours restored
    np.testing.assert_allclose(viz.to_display(normalised), query / 255.0, atol=1e-5)
    np.testing.assert_allclose(viz.to_display(query / 255.0, normalized=False), query / 255.0)


def test_ranked_list_validates():
    query = _solid((0, 0, 0))
    with pytest.raises(ValueError, match="query and 15 results"):
        viz.plot_ranked_list(query, np.stack([query] * 16))
    with pytest.raises(ValueError, match="relevant has 2 entries for 3"):
        viz.plot_ranked_list(query, np.stack([query] * 3), [True, False])
    with pytest.raises(ValueError, match="Expected an image"):
        viz.to_display(np.zeros((4, 4, 2), np.uint8))


def test_precision_recall_plot(tmp_path):
    recall = np.linspace(0, 1, 20)
    path = viz.plot_precision_recall(
        {
            "original": (1 - 0.5 * recall, recall),
            "consistent": {"precision": 1 - 0.3 * recall, "recall": recall},
        },
        tmp_path / "pr.png",
    )
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (400, 500)
    fig = viz.plot_precision_recall({"a": (1 - 0.5 * recall, recall)})
    assert [line.get_label() for line in fig.get_axes()[0].get_lines()] == ["a"]
    with pytest.raises(ValueError, match="equal length"):
        viz.plot_precision_recall({"a": (recall, recall[:3])})


def test_ranked_lists_name_classes_distances_and_blocks(tmp_path):
    query, result = (
        _solid((0, 200, 0)),
        _solid((0, 190, 10)),
    )  # green on green: the marks still tell
    blocks = [
        dict(
            query_image=query,
            result_images=np.stack([result] * 3),
            relevant=[True, False, True],
            classes=["cat", "dog", "cat"],
            distances=[0.5, 1.25, 2.0],
            query_class="cat",
            title=f"{name} AP {ap}",
        )
        for name, ap in (("good", 1.0), ("median", 0.5), ("bad", 0.1))
    ]
    fig = viz.plot_ranked_lists(blocks)
    axes = fig.get_axes()
    assert len(axes) == 3 * 16
    assert axes[0].get_title() == "Query\ncat" and axes[0].get_ylabel() == "good AP 1.0"
    assert [ax.get_title() for ax in axes[1:4]] == [
        "Rank 1 \u2713\ncat d=0.50",
        "Rank 2 \u2717\ndog d=1.25",
        "Rank 3 \u2713\ncat d=2.00",
    ]
    assert axes[32].get_ylabel() == "bad AP 0.1"
    path = viz.plot_ranked_lists(blocks, tmp_path / "three.png")
    assert matplotlib.image.imread(path).shape[1] == 1280
    with pytest.raises(ValueError, match="classes has 2 entries for 3"):
        viz.plot_ranked_lists([dict(blocks[0], classes=["a", "b"])])
    with pytest.raises(ValueError, match="unknown keys"):
        viz.plot_ranked_lists([dict(blocks[0], colour="red")])


def test_pick_queries_by_ap():
    assert viz.pick_queries_by_ap([0.5, 1.0, 0.2, 0.7, 1.0]) == {"good": 1, "median": 3, "bad": 2}
    assert viz.pick_queries_by_ap([0.3]) == {"good": 0, "median": 0, "bad": 0}
    with pytest.raises(ValueError, match="empty"):
        viz.pick_queries_by_ap([])


def test_codeword_usage_heat_map_shows_frequencies_and_entropy(tmp_path):
    rng = np.random.default_rng(0)
    codes = np.stack(
        [rng.integers(0, 16, 4000), np.full(4000, 3), rng.integers(0, 2, 4000)], axis=1
    )
    fig = viz.plot_codeword_usage(codes.astype(np.uint8), 16)
    image = fig.get_axes()[0].get_images()[0].get_array()
    want = np.stack([np.bincount(codes[:, m], minlength=16) / 4000 for m in range(3)])
    np.testing.assert_allclose(image, want)
    labels = [t.get_text() for t in fig.get_axes()[0].get_yticklabels()]
    p = want[0][want[0] > 0]
    assert labels == [
        f"0 ({-np.sum(p * np.log2(p)):.2f})",
        "1 (0.00)",
        f"2 ({1.0:.2f})",
    ]  # a collapsed codebook: 0
    assert os.path.exists(viz.plot_codeword_usage(codes, 16, tmp_path / "usage.png"))
    with pytest.raises(ValueError, match=r"in \[0, 16\)"):
        viz.plot_codeword_usage(codes + 16, 16)


def test_tsne_separates_clusters_and_colours_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = (
        rng.normal(size=(120, 20)) + 8.0 * np.eye(20)[labels]
    )  # three well separated clusters
    points = viz.tsne_embedding(features, seed=0)
    centres = np.stack([points[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(points[labels == c] - centres[c], axis=1).mean() for c in range(3))
    assert (
        min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a))
        > 2 * spread
    )
    np.testing.assert_allclose(
        viz.tsne_embedding(features, seed=0), points
    )  # seeded: the same picture
    fig = viz.plot_tsne(features, labels, class_names=["a", "b", "c"], embedding=points)
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    assert [len(c.get_offsets()) for c in ax.collections] == [40, 40, 40]
    assert os.path.exists(viz.plot_tsne(features, labels, tmp_path / "tsne.png", max_points=60))
