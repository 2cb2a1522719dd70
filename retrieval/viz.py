"""Figures shared by the notebooks (saved as PNG under ``figures/`` and shown)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

LABEL_COLOURS = {"query": "#ff8c00", "easy": "#2ca02c", "hard": "#1f77b4", "junk": "#7f7f7f",
                 "negative": "#d62728"}


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _frame(ax, colour: str, width: float = 4.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_edgecolor(colour)
        s.set_linewidth(width)


def show_examples(dataset, query: int = 0, per_label: int = 3, seed: int = 0):
    """A query (its ``bbx`` drawn) next to db images of each label (easy/hard/junk) and negatives.

    Returns the matplotlib figure: one row per query of ``query`` (int or list of ints).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .datasets.images import load_image

    queries = [query] if np.isscalar(query) else list(query)
    rng = np.random.default_rng(seed)
    cols = 1 + 3 * per_label + per_label
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.6 * cols, 1.45 * len(queries)), squeeze=False)
    db_paths = dataset.db_paths()
    for row, q in enumerate(queries):
        g = dataset.gnd[q]
        ax = axes[row, 0]
        ax.imshow(load_image(dataset.query_paths()[q]))
        x1, y1, x2, y2 = g["bbx"]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=LABEL_COLOURS["query"], lw=1.5))
        ax.set_title(f"query {q}", fontsize=7)
        _frame(ax, LABEL_COLOURS["query"])
        positives = set(g["easy"]) | set(g["hard"]) | set(g["junk"])
        negatives = [i for i in range(dataset.n_db) if i not in positives]
        picks = []
        for label in ("easy", "hard", "junk"):
            idx = list(g[label])
            chosen = rng.choice(idx, size=min(per_label, len(idx)), replace=False) if idx else []
            picks += [(int(i), label) for i in chosen] + [(None, label)] * (per_label - len(chosen))
        picks += [(int(i), "negative") for i in rng.choice(negatives, size=per_label, replace=False)]
        for c, (i, label) in enumerate(picks, start=1):
            ax = axes[row, c]
            if i is not None:
                ax.imshow(load_image(db_paths[i]))
                ax.set_title(f"{label} #{i}", fontsize=7)
            else:
                ax.axis("off")
            _frame(ax, LABEL_COLOURS[label])
    fig.tight_layout()
    return fig


def plot_per_query_ap(aps: dict, title: str = ""):
    """Per-query AP (×100) for each protocol, queries sorted by Medium AP. ``aps``: protocol →
    (n_q,) array (NaN for queries without positives)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.8))
    order = np.argsort(-np.nan_to_num(aps.get("medium", next(iter(aps.values()))), nan=-1))
    for name, colour in (("easy", "#2ca02c"), ("medium", "#ff7f0e"), ("hard", "#d62728")):
        if name in aps:
            v = np.asarray(aps[name])[order] * 100
            ax.plot(np.arange(len(v)), v, "o", ms=3, color=colour,
                    label=f"{name} (mAP {np.nanmean(v):.1f})")
    ax.set_xlabel("query (sorted by Medium AP)")
    ax.set_ylabel("AP ×100")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_map_bars(results: dict, title: str = ""):
    """Grouped bars of mAP ×100 per method for E/M/H. ``results``: method → evaluate() dict."""
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.2))
    for i, (p, colour) in enumerate((("easy", "#2ca02c"), ("medium", "#ff7f0e"), ("hard", "#d62728"))):
        vals = [100 * results[n][p]["map"] for n in names]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, color=colour, label=p)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("mAP ×100")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_centroid_usage(usage, title: str = ""):
    """How a product quantiser's centroids are used: ``usage`` (M, K) counts of vectors per
    centroid (:func:`retrieval.anchors.centroid_usage`). Left: histogram of the counts over all
    M·K centroids (empty ones counted); right: each sub-space's counts sorted, median and range."""
    import matplotlib.pyplot as plt

    usage = np.asarray(usage)
    M, K = usage.shape
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 2.8))
    ax1.hist(usage.ravel(), bins=min(50, int(usage.max()) + 1), color="#1f77b4")
    ax1.set_xlabel("vectors assigned to a centroid")
    ax1.set_ylabel("centroids")
    ax1.set_title(f"{(usage == 0).mean():.0%} of the {M}×{K} centroids unused", fontsize=8)
    s = -np.sort(-usage, axis=1)
    r = np.arange(1, K + 1)
    ax2.fill_between(r, s.min(0), s.max(0), color="#1f77b4", alpha=0.25, lw=0, label="range over sub-spaces")
    ax2.plot(r, np.median(s, 0), color="#1f77b4", label="median sub-space")
    ax2.set_xlabel("centroid rank in its sub-space")
    ax2.set_ylabel("vectors")
    ax2.set_yscale("symlog", linthresh=1)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_code_size(rows: list, k: int, title: str = ""):
    """Recall@k against exact search and quantisation error vs code size. ``rows``: dicts with
    ``bytes`` (per vector), ``relative_error`` and recall keys ``recall_<index>`` (e.g. pq, ivfpq)."""
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["bytes"])
    x = [r["bytes"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for key, colour in zip(sorted(k_ for k_ in rows[0] if k_.startswith("recall_")), ("#1f77b4", "#ff7f0e", "#2ca02c")):
        ax.plot(x, [r[key] for r in rows], "o-", color=colour, label=f"{key[7:]} recall@{k}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("code size (bytes per vector)")
    ax.set_ylabel(f"recall@{k} vs exact search")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(x, [r["relative_error"] for r in rows], "s--", color="#7f7f7f", label="quantisation error")
    ax2.set_ylabel("relative quantisation error", color="#7f7f7f")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_histories(histories: dict, title: str = ""):
    """Training curves of several runs side by side (their losses have different scales): one
    panel per name with the mean training loss per epoch. ``histories``: name → fit() history."""
    import matplotlib.pyplot as plt

    n = len(histories)
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.2 * rows), squeeze=False)
    for ax, (name, hist) in zip(axes.ravel(), histories.items()):
        ax.plot([h["epoch"] + 1 for h in hist], [h["loss"] for h in hist], "o-", ms=3, color="#1f77b4")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("mean training loss", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_pr_curves(curves: dict, marks: dict | None = None, title: str = ""):
    """Precision–recall curves of near-duplicate detection by threshold.

    ``curves``: name → (precision, recall) arrays (:func:`retrieval.neardup.pr_curve`);
    ``marks``: name → {"precision", "recall", "threshold"} (:func:`~retrieval.neardup.threshold_at_precision`),
    drawn as a dot labelled with its threshold.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for name, (p, r) in curves.items():
        line, = ax.plot(r, p, lw=1.5, label=name)
        m = (marks or {}).get(name)
        if m and m.get("threshold") is not None:
            ax.plot([m["recall"]], [m["precision"]], "o", color=line.get_color())
            ax.annotate(f"t={m['threshold']:.3f}", (m["recall"], m["precision"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("recall (same-origin pairs kept)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
