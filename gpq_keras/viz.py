"""Figures: the original's ranked-list figure (query + top 15, 2x8 grid), precision-recall curves,
codeword usage and t-SNE of features.

Matplotlib with the non-interactive Agg canvas; files are written atomically (temporary file +
rename).
"""

import os

import numpy as np

from gpq_keras.files import atomic_path
from gpq_keras.image_converter import denormalize
from gpq_keras.metrics import codeword_usage, usage_entropy

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
    statistics (model inputs) and de-normalised with `gpq_keras.image_converter.denormalize`, unless
    `normalized=False`, when they are taken as [0, 1] already.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(
            f"Expected an image (H, W), (H, W, 1) or (H, W, 3). Received shape: {image.shape}"
        )
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"Expected uint8 or float images. Received dtype: {image.dtype}")
    if normalized is False:
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    if image.ndim != 3:
        raise ValueError(
            "Normalised float images must have 3 colour channels to be de-normalised; "
            "pass normalized=False for [0, 1] grey images"
        )
    return denormalize(image)


def _shorten(text, width=18):
    return text if len(text) <= width else "..." + text[-(width - 3) :]


RELEVANT_MARK, IRRELEVANT_MARK = (
    "\u2713",
    "\u2717",
)  # check mark, ballot x: relevance without colour


def _check_results(result_images, **per_result):
    """Validate a query's result stack and its per-result arrays (None or one entry per result)."""
    result_images = np.asarray(result_images)
    if result_images.ndim < 3:
        raise ValueError(
            f"result_images must be a stack of images (n, H, W[, C]). "
            f"Received shape: {result_images.shape}"
        )
    if len(result_images) > MAX_RESULTS:
        raise ValueError(
            f"The grid holds the query and {MAX_RESULTS} results. "
            f"Received {len(result_images)} result images"
        )
    for name, values in per_result.items():
        if values is not None and len(values) != len(result_images):
            raise ValueError(
                f"{name} has {len(values)} entries for {len(result_images)} result images"
            )
    return result_images


def _cell_label(rank, relevant, class_name, distance, caption):
    """`Rank r` plus a relevance mark, then the class and distance, then the caption."""
    head = f"Rank {rank}"
    if relevant is not None:
        head += f" {RELEVANT_MARK if relevant else IRRELEVANT_MARK}"
    details = " ".join(
        part
        for part in (
            None if class_name is None else str(class_name),
            None if distance is None else f"d={float(distance):.2f}",
        )
        if part
    )
    return "\n".join(
        part
        for part in (head, details, None if caption is None else _shorten(str(caption)))
        if part
    )


def plot_ranked_list(
    query_image,
    result_images,
    relevant=None,
    path=None,
    normalized=None,
    figsize=None,
    dpi=100,
    title=None,
    captions=None,
    classes=None,
    distances=None,
    query_class=None,
):
    """The original Demo's figure: the query and its top results in a 2x8 grid.

    The first cell shows the query ("Query"); the others show `result_images` in rank order
    ("Rank 1" ... "Rank 15"). With `relevant`, each result is framed green (relevant) or red and its
    title carries a check mark or a cross, so relevance reads without colour and on green images
    too. Unlike the original's demo, which shows `Rank[2..16]` (skipping the best two results), this
    shows the true top 15.

    Args:
        query_image: (H, W, 3) uint8, or float normalised as model inputs (see `to_display`).
        result_images: (n, H, W, 3), n <= 15, best first.
        relevant: optional bool (n,), e.g. `metrics.relevance(query_label[None], result_labels)[0]`;
            None draws no frames or marks.
        path: file to write (format from the extension, default PNG); None returns the Figure.
        normalized: passed to `to_display` (None: float images are normalised model inputs).
        figsize: inches (width, height). Default (12.8, 3.6), i.e. 1280x360 pixels at dpi 100, and
            0.4 inch more per line of captions or of classes and distances.
        dpi: dots per inch of the file.
        title: optional figure title.
        captions: optional names of the results (e.g. file names), shown under their ranks.
        classes: optional class names of the results (n,), shown under their ranks.
        distances: optional distances of the results (n,), shown as d=....
        query_class: optional class name of the query, shown under "Query".

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    return plot_ranked_lists(
        [
            dict(
                query_image=query_image,
                result_images=result_images,
                relevant=relevant,
                captions=captions,
                classes=classes,
                distances=distances,
                query_class=query_class,
            )
        ],
        path=path,
        normalized=normalized,
        figsize=figsize,
        dpi=dpi,
        title=title,
    )


def plot_ranked_lists(queries, path=None, normalized=None, figsize=None, dpi=100, title=None):
    """Several queries' ranked lists, one 2x8 block each (see `plot_ranked_list`), e.g. a good, a
    median and a bad query by AP.

    Args:
        queries: list of dicts with the arguments of `plot_ranked_list`: `query_image`,
            `result_images` and optionally `relevant`, `captions`, `classes`, `distances`,
            `query_class`, and `title` (the block's heading, e.g. "median AP 0.81").
        figsize: inches; default 12.8 wide, 3.6 high per block (more with captions, classes or
            distances).

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    if not queries:
        raise ValueError("queries is empty: give at least one query's results")
    blocks = []
    for item in queries:
        unknown = set(item) - {
            "query_image",
            "result_images",
            "relevant",
            "captions",
            "classes",
            "distances",
            "query_class",
            "title",
        }
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in a ranked list")
        relevant = item.get("relevant")
        if relevant is not None:
            relevant = np.asarray(relevant, bool).reshape(-1)
        results = _check_results(
            item["result_images"],
            relevant=relevant,
            captions=item.get("captions"),
            classes=item.get("classes"),
            distances=item.get("distances"),
        )
        blocks.append(dict(item, result_images=results, relevant=relevant))
    lines = max(
        1
        + (b.get("captions") is not None)
        + (b.get("classes") is not None or b.get("distances") is not None)
        for b in blocks
    )
    height = 3.6 + 0.4 * (lines - 1) + (0.3 if any(b.get("title") for b in blocks) else 0.0)
    fig = _figure(figsize or (12.8, height * len(blocks)))
    axes = fig.subplots(GRID_ROWS * len(blocks), GRID_COLS, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for b, block in enumerate(blocks):
        cell_axes = axes[GRID_ROWS * b : GRID_ROWS * (b + 1)].ravel()
        query_label = (
            "Query" if block.get("query_class") is None else f"Query\n{block['query_class']}"
        )
        cells = [(to_display(block["query_image"], normalized), query_label, QUERY_COLOR, None)]
        for r, image in enumerate(block["result_images"]):

            def pick(key, r=r, block=block):
                values = block.get(key)
                return None if values is None else values[r]

            relevant = pick("relevant")
            frame = None if relevant is None else (RELEVANT_COLOR if relevant else IRRELEVANT_COLOR)
            label = _cell_label(
                r + 1, relevant, pick("classes"), pick("distances"), pick("captions")
            )
            cells.append((to_display(image, normalized), label, "black", frame))
        for ax, (image, label, color, frame) in zip(cell_axes, cells):
            ax.imshow(
                image,
                cmap="gray" if image.ndim == 2 else None,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            ax.set_title(label, fontsize=9, color=color)
            if frame is not None:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(frame)
                    spine.set_linewidth(4)
        if block.get("title"):
            cell_axes[0].set_ylabel(
                block["title"], fontsize=10, rotation=0, ha="right", va="center", labelpad=8
            )
    if title:
        fig.suptitle(title)
    return _finish(fig, path, dpi)


def pick_queries_by_ap(ap):
    """Query indices of a good, a median and a bad query by AP ->
    {"good": i, "median": j, "bad": k}: the highest AP, the median (the middle of the sorted APs)
    and the lowest, the first one on ties."""
    ap = np.asarray(ap, float).reshape(-1)
    if not len(ap):
        raise ValueError("ap is empty")
    order = np.argsort(-ap, kind="stable")
    return {"good": int(order[0]), "median": int(order[len(ap) // 2]), "bad": int(order[-1])}


def plot_codeword_usage(
    codes, num_codewords, path=None, title="Codeword usage", figsize=None, dpi=100
):
    """An M x K heat map of how often each codeword of each codebook codes the items: a collapsing
    codebook (few codewords used) shows at a glance. Each row's title gives its usage entropy in
    bits (log2 K when every codeword is used equally).

    Args:
        codes: uint8/int codes (N, M).
        num_codewords: K.
        path: file to write; None returns the Figure.

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer) or not len(codes):
        raise ValueError(
            f"codes must be integer codes (N, M), N >= 1. Received: {codes.dtype} {codes.shape}"
        )
    if codes.min() < 0 or codes.max() >= num_codewords:
        raise ValueError(
            f"codes must be in [0, {num_codewords}); they hold {codes.min()}..{codes.max()}"
        )
    num_subspaces = codes.shape[1]
    usage = codeword_usage(codes, num_codewords)
    entropy = usage_entropy(usage)
    fig = _figure(
        figsize or (max(4.0, 0.35 * num_codewords + 2.5), max(2.5, 0.3 * num_subspaces + 1.5))
    )
    ax = fig.subplots()
    image = ax.imshow(usage, cmap="viridis", vmin=0.0, aspect="auto", interpolation="nearest")
    ax.set_xlabel("codeword k")
    ax.set_ylabel("codebook m (entropy, bits)")
    ax.set_xticks(range(num_codewords))
    ax.set_yticks(range(num_subspaces))
    ax.set_yticklabels([f"{m} ({h:.2f})" for m, h in enumerate(entropy)], fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.colorbar(image, ax=ax, label="fraction of items")
    if title:
        ax.set_title(f"{title} (max entropy {np.log2(num_codewords):.0f} bits)")
    return _finish(fig, path, dpi)


def tsne_embedding(features, seed=0, perplexity=30.0):
    """scikit-learn's t-SNE of features (N, D) -> float (N, 2) (PCA initialisation, seeded); needs
    scikit-learn (the `[viz]` extra)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError("plot_tsne needs scikit-learn: pip install 'gpq-keras[viz]'") from None
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) < 5:
        raise ValueError(f"features must be (N, D) with N >= 5. Received shape: {features.shape}")
    perplexity = min(float(perplexity), (len(features) - 1) / 3.0)
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
        features
    )


def plot_tsne(
    features,
    labels,
    path=None,
    class_names=None,
    seed=0,
    max_points=3000,
    title="t-SNE of features",
    figsize=(6.0, 5.5),
    dpi=100,
    embedding=None,
):
    """Database features embedded in 2-D by t-SNE, one colour per class (as in the original README).

    Args:
        features: float (N, D), e.g. `model.encode(x_db)`.
        labels: int (N,) class ids.
        path: file to write; None returns the Figure.
        class_names: optional names of the classes (legend).
        seed: t-SNE's and the subsample's seed.
        max_points: at most this many points, a seeded random subsample (t-SNE is quadratic).
        embedding: optional precomputed (N, 2) points (skips t-SNE).

    Returns:
        `path` when given, else the matplotlib `Figure`.
    """
    labels = np.asarray(labels).reshape(-1)
    features = np.asarray(features)
    if len(labels) != len(features):
        raise ValueError(f"labels has {len(labels)} entries for {len(features)} features")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int class ids (N,). Received dtype: {labels.dtype}")
    keep = np.arange(len(labels))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))
    points = (
        tsne_embedding(features[keep], seed) if embedding is None else np.asarray(embedding)[keep]
    )
    fig = _figure(figsize)
    ax = fig.subplots()
    cmap = _colormap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels[keep]):
        at = labels[keep] == c
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(points[at, 0], points[at, 1], s=6, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2.5, fontsize=7, loc="best", ncol=2 if len(np.unique(labels)) > 10 else 1)
    if title:
        ax.set_title(title)
    return _finish(fig, path, dpi)


def _colormap(name):
    from matplotlib import colormaps

    return colormaps[name]


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
            raise ValueError(
                f"curve {name!r}: precision and recall must be 1-D of equal length. "
                f"Received shapes {precision.shape} and {recall.shape}"
            )
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
