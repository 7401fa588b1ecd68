"""Figures: the original's ranked-list figure (query + top 15, 2x8 grid) and precision-recall curves.

Matplotlib with the non-interactive Agg canvas; files are written atomically (temporary file + rename).
"""

import os

import numpy as np

from gpq_keras.files import atomic_path

GRID_ROWS, GRID_COLS = 2, 8
MAX_RESULTS = GRID_ROWS * GRID_COLS - 1  # 15: the first cell holds the query
RELEVANT_COLOR = "#00c000"
IRRELEVANT_COLOR = "#e00000"
QUERY_COLOR = "m"  # the original's magenta "Query" title


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)  # its own Agg canvas: no pyplot state, safe in threads and tests


def _finish(fig, path, dpi):
    """Lay out `fig`; write it to `path` atomically and return the path, or return the figure."""
    fig.tight_layout()
    if path is None:
        return fig
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".") or "png"
    with atomic_path(path, suffix=f".{ext}") as tmp:
        fig.savefig(tmp, dpi=dpi, format=ext)
    return path


def to_display(image, normalized=None):
    """An image as floats in [0, 1] (H, W, 3) or (H, W) for `imshow`.

    uint8 images are divided by 255. Float images are taken as normalised with the original's colour
    statistics (model inputs) and de-normalised with `gpq_keras.data.pipeline.denormalize`, unless
    `normalized=False`, when they are taken as [0, 1] already.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"Expected an image (H, W), (H, W, 1) or (H, W, 3). Received shape: {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"Expected uint8 or float images. Received dtype: {image.dtype}")
    if normalized is False:
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    if image.ndim != 3:
        raise ValueError("Normalised float images must have 3 colour channels to be de-normalised; "
                         "pass normalized=False for [0, 1] grey images")
    from gpq_keras.data.pipeline import denormalize

    return denormalize(image)


def _shorten(text, width=18):
    return text if len(text) <= width else "..." + text[-(width - 3):]


def plot_ranked_list(query_image, result_images, relevant=None, path=None, normalized=None,
                     figsize=(12.8, 3.6), dpi=100, title=None, captions=None):
    """The original Demo's figure: the query and its top results in a 2x8 grid.

    The first cell shows the query ("Query"); the others show `result_images` in rank order
    ("Rank 1" ... "Rank 15"), each framed green when relevant and red when not. Unlike the original's
    demo, which shows `Rank[2..16]` (skipping the best two results), this shows the true top 15.

    Args:
        query_image: (H, W, 3) uint8, or float normalised as model inputs (see `to_display`).
        result_images: (n, H, W, 3), n <= 15, best first.
        relevant: optional bool (n,), e.g. `metrics.relevance(query_label[None], result_labels)[0]`;
            None draws no frames.
        path: file to write (format from the extension, default PNG); None returns the Figure.
        normalized: passed to `to_display` (None: float images are normalised model inputs).
        figsize: inches (width, height). Default (12.8, 3.6), i.e. 1280x360 pixels at dpi 100.
        dpi: dots per inch of the file.
        title: optional figure title.
        captions: optional names of the results (e.g. file names), shown under their ranks.

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    result_images = np.asarray(result_images)
    if result_images.ndim < 3:
        raise ValueError(f"result_images must be a stack of images (n, H, W[, C]). "
                         f"Received shape: {result_images.shape}")
    if len(result_images) > MAX_RESULTS:
        raise ValueError(f"The grid holds the query and {MAX_RESULTS} results. "
                         f"Received {len(result_images)} result images")
    if relevant is not None:
        relevant = np.asarray(relevant, bool).reshape(-1)
        if len(relevant) != len(result_images):
            raise ValueError(f"relevant has {len(relevant)} entries for {len(result_images)} result images")
    if captions is not None and len(captions) != len(result_images):
        raise ValueError(f"captions has {len(captions)} entries for {len(result_images)} result images")
    if captions is not None:  # two-line titles: room between the rows
        figsize = (figsize[0], figsize[1] + 0.8)
    fig = _figure(figsize)
    axes = fig.subplots(GRID_ROWS, GRID_COLS, squeeze=False).ravel()
    cells = [(to_display(query_image, normalized), "Query", QUERY_COLOR, None)]
    for rank, image in enumerate(result_images, start=1):
        frame = None if relevant is None else (RELEVANT_COLOR if relevant[rank - 1] else IRRELEVANT_COLOR)
        label = f"Rank {rank}" if captions is None else f"Rank {rank}\n{_shorten(str(captions[rank - 1]))}"
        cells.append((to_display(image, normalized), label, "black", frame))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, (image, label, color, frame) in zip(axes, cells):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(label, fontsize=10, color=color)
        if frame is not None:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(frame)
                spine.set_linewidth(4)
    if title:
        fig.suptitle(title)
    return _finish(fig, path, dpi)


def plot_precision_recall(curves, path=None, title="Precision-recall", figsize=(5.0, 4.0), dpi=100):
    """Precision against recall for one or more systems.

    Args:
        curves: dict name -> (precision, recall) arrays, or name -> the "curve" dict of
            `metrics.evaluate_ranking(..., curve=True)`.
        path: file to write; None returns the Figure.

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    if not curves:
        raise ValueError("curves is empty: give at least one name -> (precision, recall)")
    fig = _figure(figsize)
    ax = fig.subplots()
    for name, curve in curves.items():
        if isinstance(curve, dict):
            precision, recall = curve["precision"], curve["recall"]
        else:
            precision, recall = curve
        precision, recall = np.asarray(precision, float), np.asarray(recall, float)
        if precision.shape != recall.shape or precision.ndim != 1:
            raise ValueError(f"curve {name!r}: precision and recall must be 1-D of equal length. "
                             f"Received shapes {precision.shape} and {recall.shape}")
        ax.plot(recall, precision, label=str(name))
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return _finish(fig, path, dpi)
