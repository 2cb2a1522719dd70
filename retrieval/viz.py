"""Figures shared by the notebooks (saved as PNG under ``figures/`` and shown)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets.images import load_image, resize_longer
from .io import atomic_write
from .metrics import protocol_gnd

LABEL_COLOURS = {"query": "#ff8c00", "easy": "#2ca02c", "hard": "#1f77b4", "junk": "#7f7f7f",
                 "negative": "#d62728"}


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG atomically (:func:`~retrieval.io.atomic_write`)."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight",
                                                     metadata={"Software": None}))


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
    import matplotlib.pyplot as plt  # lazy: figures only
    from matplotlib.patches import Rectangle  # lazy: figures only

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


def show_part_query(dataset, query: int, other: int, per_label: int = 4, seed: int = 0):
    """A part query (``query``) and another query of its landmark (``other``): ``per_label`` of the part query's
    positives, then views that are positives of ``other`` but junk for ``query`` (part hidden). Returns the figure."""
    import matplotlib.pyplot as plt  # lazy: figures only
    from matplotlib.patches import Rectangle  # lazy: figures only
    rng, g, h = np.random.default_rng(seed), dataset.gnd[query], dataset.gnd[other]
    pick = lambda items: [items[i] for i in sorted(rng.choice(len(items), min(per_label, len(items)), replace=False))]  # noqa: E731
    pos = pick([(lab, int(i), f"{lab} #{i}") for lab in ("easy", "hard") for i in g[lab]])
    moved = pick([("junk", int(i), f"junk for {query} #{i}") for i in sorted((set(h["easy"]) | set(h["hard"])) & set(g["junk"]))])
    panels = [("query", query, f"part query {query}")] + pos + [(None,) * 3] * (per_label - len(pos))
    panels += [("query", other, f"query {other}")] + moved + [(None,) * 3] * (per_label - len(moved))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 1.7), squeeze=False)
    for ax, (label, i, title) in zip(axes[0], panels):
        if label is None:
            ax.axis("off")
            continue
        ax.imshow(load_image((dataset.query_paths() if label == "query" else dataset.db_paths())[i]))
        if label == "query":
            x1, y1, x2, y2 = dataset.gnd[i]["bbx"]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=LABEL_COLOURS["query"], lw=1.5))
        ax.set_title(title, fontsize=7)
        _frame(ax, LABEL_COLOURS[label])
    fig.tight_layout()
    return fig


_PROTOCOL_COLOURS = {"easy": "#2ca02c", "medium": "#ff7f0e", "hard": "#d62728", "classic": "#9467bd"}


def plot_per_query_ap(aps: dict, title: str = ""):
    """Per-query AP (×100) for each protocol, queries sorted by Medium AP (or by the first protocol
    given, e.g. ``classic``). ``aps``: protocol → (n_q,) array (NaN for queries without positives)."""
    import matplotlib.pyplot as plt  # lazy: figures only

    fig, ax = plt.subplots(figsize=(8, 2.8))
    key = "medium" if "medium" in aps else next(iter(aps))
    order = np.argsort(-np.nan_to_num(aps[key], nan=-1))
    for name, colour in _PROTOCOL_COLOURS.items():
        if name in aps:
            v = np.asarray(aps[name])[order] * 100
            ax.plot(np.arange(len(v)), v, "o", ms=3, color=colour,
                    label=f"{name} (mAP {np.nanmean(v):.1f})")
    ax.set_xlabel(f"query (sorted by {key} AP)")
    ax.set_ylabel("AP ×100")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_map_bars(results: dict, title: str = ""):
    """Grouped bars of mAP ×100 per method, one bar per protocol present (E/M/H, or classic on
    Oxford5k/Paris6k). ``results``: method → evaluate() dict."""
    import matplotlib.pyplot as plt  # lazy: figures only

    names = list(results)
    x = np.arange(len(names))
    present = [p for p in _PROTOCOL_COLOURS if any(p in results[n] for n in names)]
    width = min(0.27, 0.8 / max(1, len(present)))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.2))
    for i, p in enumerate(present):
        vals = [100 * results[n][p]["map"] if p in results[n] else np.nan for n in names]
        bars = ax.bar(x + (i - (len(present) - 1) / 2) * width, vals, width, color=_PROTOCOL_COLOURS[p], label=p)
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
    import matplotlib.pyplot as plt  # lazy: figures only

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
    import matplotlib.pyplot as plt  # lazy: figures only

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
    import matplotlib.pyplot as plt  # lazy: figures only

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
    import matplotlib.pyplot as plt  # lazy: figures only

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


# --------------------------------------------------------------------------- top-k result grids
#: frame colours of ranked results (CSA paper's figure convention) and of the query
RESULT_COLOURS = {"positive": "#2ca02c", "negative": "#d62728", "junk": "#7f7f7f", "query": "#ff8c00"}


@functools.lru_cache(maxsize=8192)
def thumbnail(path: str, size: int = 160) -> np.ndarray:
    """The image at ``path`` resized so its longer side is ``size`` px, (H, W, 3) uint8; read once
    per (path, size) and cached for the process (grids and the browser redraw often)."""

    if size < 8:
        raise ValueError(f"thumbnail size must be >= 8 px, got {size}")
    arr = np.asarray(resize_longer(load_image(path), size))
    arr.setflags(write=False)  # shared by every caller
    return arr


def result_labels(gnd_entry: dict, ids, protocol: str = "medium") -> list[str]:
    """``positive`` / ``junk`` / ``negative`` of db ``ids`` for one query under ``protocol``
    (revisited rules: Easy counts hard as junk, Hard counts easy as junk)."""

    g = protocol_gnd([gnd_entry], protocol)[0]
    ok, junk = set(g["ok"].tolist()), set(g["junk"].tolist())
    return ["positive" if i in ok else "junk" if i in junk else "negative" for i in map(int, ids)]


def pick_queries(ap_a, ap_b, n_gain: int = 3, n_loss: int = 3, n_random: int = 2,
                 seed: int = 0) -> list[tuple[int, str]]:
    """Queries to show for a comparison of method B against A: the ``n_gain`` largest AP gains,
    the ``n_loss`` largest losses (only queries that do change) and ``n_random`` others, drawn with
    ``seed``. ``ap_a``, ``ap_b``: (n_q,) AP (NaN = no positives, never picked). Returns
    ``[(query, "gain" | "loss" | "random"), ...]`` in that order."""
    ap_a, ap_b = np.asarray(ap_a, float), np.asarray(ap_b, float)
    if ap_a.shape != ap_b.shape or ap_a.ndim != 1:
        raise ValueError(f"ap_a and ap_b must be (n_q,) arrays of one length, got {ap_a.shape} and {ap_b.shape}")
    valid = np.flatnonzero(~(np.isnan(ap_a) | np.isnan(ap_b)))
    delta = ap_b[valid] - ap_a[valid]
    order = np.argsort(-delta, kind="stable")
    gains = [int(valid[i]) for i in order[:n_gain] if delta[i] > 0]
    losses = [int(valid[i]) for i in order[::-1][:n_loss] if delta[i] < 0 and valid[i] not in gains]
    rest = np.setdiff1d(valid, gains + losses)
    rng = np.random.default_rng(seed)
    randoms = sorted(int(q) for q in rng.choice(rest, size=min(n_random, rest.size), replace=False))
    return [(q, "gain") for q in gains] + [(q, "loss") for q in losses] + [(q, "random") for q in randoms]


def _query_cell(ax, dataset, q: int, thumb: int, label: str) -> None:
    from matplotlib.patches import Rectangle  # lazy: figures only

    path = dataset.query_paths()[q]
    img = thumbnail(str(path), thumb)
    ax.imshow(img)
    bbx = dataset.gnd[q].get("bbx")
    if bbx is not None:

        with Image.open(path) as im:  # header only: the scale of the box on the thumbnail
            s = img.shape[1] / im.size[0]
        x1, y1, x2, y2 = (float(v) * s for v in bbx)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=RESULT_COLOURS["query"], lw=1.2))
    ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center", labelpad=4)
    _frame(ax, RESULT_COLOURS["query"], 3.0)


def short_names(a: str, b: str) -> tuple[str, str]:
    """Row labels of two methods: ``first stage`` / ``+csa`` when ``b`` extends ``a``'s name."""
    if b.startswith(a + "+"):
        return "first stage", b[len(a):]
    if a.startswith(b + "+"):
        return a[len(b):], "first stage"
    return a, b


def _result_cells(axes, dataset, q: int, ranks, scores, protocol: str, thumb: int) -> None:
    db_paths = dataset.db_paths()
    k = len(axes)
    ids = np.asarray(ranks)[:k, q]
    labels = result_labels(dataset.gnd[q], ids, protocol)
    for r, (ax, i, label) in enumerate(zip(axes, ids, labels)):
        ax.imshow(thumbnail(str(db_paths[i]), thumb))
        s = None if scores is None else scores[r, q]
        ax.set_xlabel(f"{r + 1}. #{i}" + ("" if s is None or np.isnan(s) else f"  {s:.3f}"), fontsize=5.5, labelpad=1.5)
        _frame(ax, RESULT_COLOURS[label], 3.0)


def _grid_axes(n_rows: int, k: int, aspect: float = 0.75, thumb_in: float = 0.72, pair_gap: bool = False):
    """Figure with ``n_rows`` rows of 1 + k image cells of ``thumb_in`` inches width and
    ``aspect`` (height / width), room for a caption under each and a label left of each row."""
    import matplotlib.pyplot as plt  # lazy: figures only

    heights = [1.0] * n_rows
    if pair_gap:  # a thin empty row between consecutive pairs
        heights = sum(([1.0, 1.0, 0.15] for _ in range(n_rows // 2)), [])[:-1]
    cell_h = thumb_in * aspect
    width, height = thumb_in * (k + 1) * 1.05 + 1.3, cell_h * 1.3 * sum(heights) + 0.45
    fig = plt.figure(figsize=(width, height))
    gs = fig.add_gridspec(len(heights), k + 1, height_ratios=heights, wspace=0.05, hspace=0.3,
                          left=1.3 / width, right=0.995, top=1 - 0.3 / height, bottom=0.15 / height)
    rows = [i for i, h in enumerate(heights) if h == 1.0]
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(k + 1)] for r in rows])
    return fig, axes


def _aspect(dataset, queries) -> float:
    """Median height / width of the queries' images (header reads only)."""

    ratios = []
    for q in list(queries)[:8]:
        with Image.open(dataset.query_paths()[q]) as im:
            ratios.append(im.size[1] / im.size[0])
    return float(np.median(ratios)) if ratios else 0.75


def plot_topk(dataset, ranks, queries, scores=None, k: int = 10, protocol: str = "medium", ap=None,
              thumb: int = 160, title: str = ""):
    """Top-k grid: one row per query, the query (``bbx`` in orange, orange frame) then its top ``k``
    results framed green / red / grey (positive / negative / junk under ``protocol``) with rank,
    db index and similarity under each. ``ranks`` (n_ranked, n_q), ``scores`` (n, n_q) or None,
    ``ap`` (n_q,) shown in the query's title when given."""
    queries = [int(q) for q in np.atleast_1d(queries)]
    fig, axes = _grid_axes(len(queries), k, _aspect(dataset, queries))
    for row, q in enumerate(queries):
        t = f"query {q}" + ("" if ap is None else f"\nAP {100 * ap[q]:.1f}")
        _query_cell(axes[row, 0], dataset, q, thumb, t)
        _result_cells(axes[row, 1:], dataset, q, ranks, scores, protocol, thumb)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 - 0.08 / fig.get_figheight(), va="top")
    return fig


def plot_topk_pairs(dataset, a: dict, b: dict, picks, k: int = 10, protocol: str = "medium",
                    thumb: int = 160, title: str = ""):
    """Paired rows for two methods on the same queries (the CSA paper's qualitative figure): for each
    pick, the row of method ``a`` above the row of ``b``, each starting with the query and that
    method's AP under ``protocol``. ``a``, ``b``: :func:`retrieval.run.store.load_ranks` dicts;
    ``picks``: query ids or ``(query, reason)`` pairs (:func:`pick_queries`)."""
    picks = [(int(p), "") if np.isscalar(p) else (int(p[0]), str(p[1])) for p in picks]
    fig, axes = _grid_axes(2 * len(picks), k, _aspect(dataset, [q for q, _ in picks]), pair_gap=True)
    names = short_names(a["method"], b["method"])
    for i, (q, reason) in enumerate(picks):
        for j, run in enumerate((a, b)):
            row = 2 * i + j
            ap = run["ap"][protocol][q]
            head = f"query {q}" + (f" · {reason}" if reason else "") + "\n" if j == 0 else ""
            _query_cell(axes[row, 0], dataset, q, thumb, f"{head}{names[j]}\nAP {100 * ap:.1f}")
            _result_cells(axes[row, 1:], dataset, q, run["ranks"], run["scores"], protocol, thumb)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 - 0.08 / fig.get_figheight(), va="top")
    return fig
