"""Near-duplicate detection by a similarity threshold: every pair of images whose cosine similarity
is at least ``t`` is *kept* (declared same origin). Pairs are all N(N−1)/2 pairs i < j of one image set
with ``groups`` (N,) origin ids, -1 for images of no origin (never a positive); every pair counts,
two images of no origin included (they are the hardest negatives a collection has).

A kept pair of the same origin is correct ("same-origin kept"), any other kept pair is wrong
("unrelated kept"); precision = correct / kept, recall = correct / all same-origin pairs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pair_scores", "threshold_table", "pr_curve", "threshold_at_precision", "recall_levels_table",
           "format_threshold_table"]


def pair_scores(X, groups) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and same-origin flag of every pair i < j.

    X (N, D) L2-normalised descriptors, groups (N,) int (−1: no origin). Returns ``scores``
    (P,) float64 and ``same`` (P,) bool for all P = N(N−1)/2 pairs, in ``np.triu_indices(N, 1)``
    order; a pair is the same origin when both share a group >= 0.
    """
    X = np.asarray(X, dtype=np.float64)
    g = np.asarray(groups)
    if X.ndim != 2:
        raise ValueError(f"X must be (N, D), got shape {X.shape}")
    if g.shape != (X.shape[0],):
        raise ValueError(f"groups must be ({X.shape[0]},), got shape {g.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or Inf")
    i, j = np.triu_indices(X.shape[0], 1)
    S = X @ X.T
    return S[i, j], (g[i] == g[j]) & (g[i] >= 0)


def _check(scores, same) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(same, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and same {y.shape} must have the same length")
    if not y.any():
        raise ValueError("no same-origin pair: precision/recall are undefined")
    return s, y


def threshold_table(scores, same, thresholds) -> list[dict]:
    """For each threshold t: pairs kept (score >= t) of the same origin and unrelated, precision,
    recall. Returns one dict per threshold: ``threshold, same_kept, unrelated_kept, precision,
    recall`` (precision 1.0 when nothing is kept)."""
    s, y = _check(scores, same)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    order = np.sort(s[y]), np.sort(s[~y])
    # pairs with score >= t: total − those strictly below t
    tp = y.sum() - np.searchsorted(order[0], t, side="left")
    fp = (~y).sum() - np.searchsorted(order[1], t, side="left")
    rows = []
    for ti, a, b in zip(t, tp, fp):
        kept = int(a + b)
        rows.append(dict(threshold=float(ti), same_kept=int(a), unrelated_kept=int(b),
                         precision=float(a / kept) if kept else 1.0, recall=float(a / y.sum())))
    return rows


def pr_curve(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as the threshold (descending).
    Returns ``(precision, recall, thresholds)``, each (n_distinct,)."""
    s, y = _check(scores, same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    kept = last + 1
    return tp / kept, tp / y.sum(), s[last]


def threshold_at_precision(scores, same, precision: float) -> dict:
    """The lowest threshold whose precision is >= ``precision`` (the largest recall at that
    precision): ``{threshold, precision, recall}``; ``threshold`` is None when no threshold reaches it."""
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    p, r, t = pr_curve(scores, same)
    ok = np.flatnonzero(p >= precision)
    if ok.size == 0:
        return dict(threshold=None, precision=float(p.max()), recall=0.0)
    k = ok[np.argmax(r[ok])]
    return dict(threshold=float(t[k]), precision=float(p[k]), recall=float(r[k]))


def recall_levels_table(X, groups, quantiles: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)) -> list[dict]:
    """:func:`threshold_table` over every pair of the set at ``quantiles`` of the same-origin pairs'
    scores (0.1 keeps 90 % of them, 0.5 half: the precision at 50 % recall). Each row also says how
    many of its ``unrelated_kept`` pairs are ``unrelated_unrelated_kept``: two images of no origin
    (informative only; they count in precision like any wrong pair). X (N, D) L2-normalised, groups (N,)."""
    scores, same = pair_scores(X, groups)
    g = np.asarray(groups)
    i, j = np.triu_indices(len(g), 1)
    among = scores[(g[i] < 0) & (g[j] < 0)]
    rows = threshold_table(scores, same, np.quantile(scores[same], list(quantiles)))
    for row in rows:
        row["unrelated_unrelated_kept"] = int((among >= row["threshold"]).sum())
    return rows


def format_threshold_table(rows: list[dict]) -> str:
    """The rows of :func:`recall_levels_table` as a fixed-width text table."""
    lines = [f"{'t':>7} {'same-origin kept':>17} {'unrelated kept':>15} {'precision':>10} {'recall':>7} "
             f"{'of which unrelated-unrelated':>29}"]
    lines += [f"{r['threshold']:7.4f} {r['same_kept']:17d} {r['unrelated_kept']:15d} {r['precision']:10.3f} "
              f"{r['recall']:7.3f} {r.get('unrelated_unrelated_kept', 0):29d}" for r in rows]
    return "\n".join(lines)
