"""Paired bootstrap intervals over query landmarks: is a difference between two methods more than noise?

Queries of one landmark share their ground truth and their mistakes, so the unit of independence is the
landmark, not the query (``../shared/protocol.md``; Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13 percentile intervals). For methods A and B evaluated on the same queries,
``d_q = AP_A(q) - AP_B(q)``; each resample draws landmarks with replacement, each draw bringing all its
queries, and takes the mean of ``d`` over the drawn queries. The interval is the percentile interval of
those means.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .metrics import medium_hard_mean


def paired_bootstrap(ap_a: Sequence[float], ap_b: Sequence[float], groups: Sequence, n_boot: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Mean difference ``mean(ap_a - ap_b)`` over the queries and its ``level`` percentile interval by
    resampling ``groups`` (one label per query: its landmark) with replacement, ``n_boot`` times (seeded).

    ``ap_a``, ``ap_b``: per-query AP (nq,) of two methods on the same queries (a query NaN in either,
    e.g. one without positives under a protocol, is left out of both). Returns ``{"diff", "low", "high",
    "n_queries", "n_groups", "n_boot", "level", "excludes_zero"}`` (fractions, like the APs).
    """
    a, b = np.asarray(ap_a, dtype=np.float64), np.asarray(ap_b, dtype=np.float64)
    labels = np.asarray(groups)
    if a.ndim != 1 or a.shape != b.shape or labels.shape != a.shape:
        raise ValueError(f"ap_a, ap_b and groups must be 1-D of one length, got {a.shape}, {b.shape}, {labels.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        raise ValueError("no query has a finite AP in both methods")
    d, labels = a[keep] - b[keep], labels[keep]
    _, g = np.unique(labels, return_inverse=True)
    sums, counts = np.bincount(g, weights=d), np.bincount(g).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return dict(diff=float(d.mean()), low=float(low), high=float(high), n_queries=int(d.size), n_groups=int(len(sums)),
                n_boot=int(n_boot), level=float(level), excludes_zero=bool(low > 0 or high < 0))


def verdict(intervals: Sequence[dict]) -> str:
    """``holds`` when every interval (one per seed) excludes 0 on the same side, else ``inconclusive``."""
    if not intervals:
        raise ValueError("verdict of no intervals")
    signs = {np.sign(iv["diff"]) for iv in intervals}
    return "holds" if all(iv["excludes_zero"] for iv in intervals) and len(signs) == 1 else "inconclusive"


def pooled_bootstrap(parts: Sequence[tuple[Sequence[float], Sequence[float], Sequence]], n_boot: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """One paired bootstrap over several benchmarks (``../shared/protocol.md``, "Seeds"): ``parts`` holds one
    ``(ap_a, ap_b, groups)`` per benchmark (e.g. per seed's rendering); every query joins one pool and the
    landmarks of different parts stay different groups (a label is prefixed with its part's index), so a
    resample draws from all their landmarks at once. Same output as :func:`paired_bootstrap`."""
    if not parts:
        raise ValueError("pooled_bootstrap of no benchmarks")
    a = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts])
    b = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts])
    groups = [f"{i}:{g}" for i, p in enumerate(parts) for g in np.asarray(p[2]).tolist()]
    return paired_bootstrap(a, b, groups, n_boot=n_boot, seed=seed, level=level)


def claim_verdict(pooled: dict, per_seed: Sequence[dict]) -> str:
    """The verdict on a claim "A > B" (``../shared/protocol.md``): ``holds`` when the pooled interval of A − B
    lies above 0 and every seed's mean difference is positive; ``refuted`` when the pooled interval lies
    below 0; ``inconclusive`` otherwise."""
    if pooled["low"] > 0 and all(iv["diff"] > 0 for iv in per_seed):
        return "holds"
    if pooled["high"] < 0:
        return "refuted"
    return "inconclusive"


def recorded_ap(result: dict, protocol: str) -> np.ndarray:
    """Per-query AP (nq,) of an evaluate() result or a recorded row (its ``"ap"`` lists hold None for NaN)."""
    return np.array([np.nan if v is None else v for v in result["ap"][protocol]], dtype=float)


def format_interval(iv: dict | None, scale: float = 100.0) -> str:
    """``+1.23 [-0.40, +2.95]`` (×``scale``); ``n/a`` for None (a protocol no query could score)."""
    if iv is None:
        return "n/a"
    return f"{scale * iv['diff']:+.2f} [{scale * iv['low']:+.2f}, {scale * iv['high']:+.2f}]"


def compare_rows(results: dict, groups: Sequence, reference: str | None = None,
                 protocols: Sequence[str] = ("medium", "hard"), n_boot: int = 10_000, seed: int = 0,
                 contenders: Sequence[str] | None = None) -> dict:
    """Paired intervals of a results table: ``results`` maps a row name to an evaluate() result with
    per-query APs under ``"ap"`` (``evaluate(..., per_query=True)``, or a recorded row whose ``"ap"``
    lists hold None for NaN). Returns ``{"reference", "rows": {name: {protocol: interval}}`` (each row
    minus ``reference``, default the first row)``, "best", "runner_up", "best_vs_runner_up": {protocol:
    interval}, "verdict"}``; best = the highest mean of Medium and Hard mAP among ``contenders`` (default every
    row; e.g. without the rows kept only as reference points), None without two."""
    have = {n: r for n, r in results.items() if isinstance(r, dict) and r.get("ap")
            and all(p in r for p in protocols)}
    if not have:
        return dict(reference=None, rows={}, best=None, runner_up=None, best_vs_runner_up={}, verdict=None)
    ref = reference if reference is not None else next(iter(have))

    def ap(name, p):
        return recorded_ap(have[name], p)

    # a protocol no query can score (e.g. Hard of an imported set without hard positives) has no interval
    protocols = [p for p in protocols if any(np.isfinite(ap(n, p)).any() for n in have)]
    if not protocols:
        return dict(reference=None, rows={}, best=None, runner_up=None, best_vs_runner_up={}, verdict=None)

    def diff(a, b):
        return {p: paired_bootstrap(ap(a, p), ap(b, p), groups, n_boot=n_boot, seed=seed) for p in protocols}

    rows = {n: diff(n, ref) for n in have if n != ref}
    out = dict(reference=ref, rows=rows, best=None, runner_up=None, best_vs_runner_up={}, verdict=None)
    eligible = [n for n in have if contenders is None or n in contenders]
    if len(eligible) >= 2 and set(protocols) <= {"medium", "hard"}:
        best, runner_up = sorted(eligible, key=lambda n: -medium_hard_mean(have[n]))[:2]
        out.update(best=best, runner_up=runner_up, best_vs_runner_up=diff(best, runner_up))
        out["verdict"] = verdict(list(out["best_vs_runner_up"].values()))
    return out


def format_comparison(results: dict, groups: Sequence, reference: str | None = None, **kwargs) -> str:
    """The rows' Medium / Hard differences to the reference row with their 95 % intervals (×100), then
    the best row against the runner-up and the verdict (:func:`compare_rows`)."""
    cmp = compare_rows(results, groups, reference, **kwargs)
    if cmp["reference"] is None:
        return "(no per-query APs: no intervals)"
    n = len(set(np.asarray(groups).tolist()))
    w = max(len(str(k)) for k in results) + 2
    lines = [f"differences to {cmp['reference']}, ×100, 95 % interval by resampling the {n} query landmarks:",
             f"{'method':<{w}}{'ΔM [95 % CI]':>26}{'ΔH [95 % CI]':>26}"]
    lines += [f"{name:<{w}}{format_interval(iv.get('medium')):>26}{format_interval(iv.get('hard')):>26}"
              for name, iv in cmp["rows"].items()]
    if cmp["best"] is not None:
        b = cmp["best_vs_runner_up"]
        lines.append(f"best {cmp['best']} − runner-up {cmp['runner_up']}: M {format_interval(b.get('medium'))}, "
                     f"H {format_interval(b.get('hard'))} → {cmp['verdict']} (holds: both intervals exclude 0, same sign)")
    return "\n".join(lines)
