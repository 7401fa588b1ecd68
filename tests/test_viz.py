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
    assert [ax.get_title() for ax in axes] == ["Query"] + [f"Rank {i}" for i in range(1, 16)]
    positions = sorted((round(-ax.get_position().y0, 2), round(ax.get_position().x0, 2)) for ax in axes)
    assert len({p[0] for p in positions}) == 2 and len({p[1] for p in positions}) == 8
    frames = [ax.spines["left"].get_edgecolor() for ax in axes[1:]]
    assert all(np.allclose(c[:3], (0, 192 / 255, 0)) for c in frames[:5])
    assert all(np.allclose(c[:3], (224 / 255, 0, 0)) for c in frames[5:])
    assert not axes[0].spines["left"].get_visible()  # the query has no frame


def test_normalised_float_images_are_denormalised(tmp_path):
    from gpq_keras.data.pipeline import CHANNEL_MEAN, CHANNEL_STD

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
    path = viz.plot_precision_recall({"original": (1 - 0.5 * recall, recall),
                                      "consistent": {"precision": 1 - 0.3 * recall, "recall": recall}},
                                     tmp_path / "pr.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (400, 500)
    fig = viz.plot_precision_recall({"a": (1 - 0.5 * recall, recall)})
    assert [line.get_label() for line in fig.get_axes()[0].get_lines()] == ["a"]
    with pytest.raises(ValueError, match="equal length"):
        viz.plot_precision_recall({"a": (recall, recall[:3])})
