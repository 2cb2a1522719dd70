"""Retrieval metrics for revisited Oxford/Paris (ROxford5k / RParis6k).

Implements the evaluation of Radenovic et al., "Revisiting Oxford and Paris:
Large-Scale Image Retrieval Benchmarking" (CVPR 2018): trapezoid-rule AP with
junk images removed from the ranking, mP@k, and the Easy/Medium/Hard
protocols; plus the original Oxford5k/Paris6k protocol (Philbin et al., 2007), ``classic``.
Per-query values are vectorised over ranked positions and queries; the means over queries are
summed in query order, as revisitop's loop does, so they equal it bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PROTOCOLS = ("easy", "medium", "hard")
#: the original Oxford5k / Paris6k protocol: one ``ok`` (good + ok) and one ``junk`` list per query
CLASSIC = "classic"
ALL_PROTOCOLS = PROTOCOLS + (CLASSIC,)
#: column titles of the tables
PROTOCOL_LABELS = {"easy": "E", "medium": "M", "hard": "H", CLASSIC: "classic"}
_GND_KEYS = ("ok", "junk", "bbx", "easy", "hard", "good")  # keys of any gnd format


def compute_ap(pos, nres) -> float:
    """AP of one ranking by the trapezoid rule.

    pos: (n_found,) sorted 0-based positions of positives, junk already removed.
    nres: total number of positives of the query.
    """
    r = np.asarray(pos, dtype=np.float64).ravel()
    return float(_ap_terms(r, np.arange(r.size, dtype=np.float64), 1.0 / nres).sum())


def _ap_terms(r, j, recall_step):
    """Per-positive AP contribution; r: junk-free 0-based position, j: index of the positive."""
    p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    p1 = (j + 1.0) / (r + 1.0)
    return (p0 + p1) * recall_step / 2.0


def _ids(values, name: str) -> np.ndarray:
    a = np.asarray(values if values is not None else [])
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must contain integer db indices, got dtype {a.dtype}")
    a = a.astype(np.int64).ravel()
    if a.min() < 0:
        raise ValueError(f"{name} contains a negative db index ({a.min()})")
    return a


NEGATIVE_RANKS = "ranks contains negative db indices"


def _check_ranks(ranks, nq: int) -> np.ndarray:
    """``ranks`` as a 2-D integer array of ``nq`` columns. Negative ids are refused by :func:`_core`,
    on its candidate entries (sparing a pass over ranks)."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be a 2-D integer array (n_ranked, n_queries), "
                         f"got shape {ranks.shape} dtype {ranks.dtype}")
    if ranks.shape[1] != nq:
        raise ValueError(f"ranks has {ranks.shape[1]} columns but gnd has {nq} queries")
    return ranks


def _core(ranks, oks, junks, nres, kappas):
    """AP and P@k of every query; oks/junks: per-query id arrays, nres: (nq,) positives.

    Returns aps (nq,) and prs (nq, len(kappas)); queries with nres == 0 get NaN.
    """
    n_ranked, nq = ranks.shape
    # Labels of the ids that have one: bit 1 = positive, bit 2 = junk (both may be set, as in the
    # reference). Ids >= n_lab (e.g. the R1M distractors) map to the all-zero column n_lab, so the
    # table stays as small as the labelled ids (cache-resident) whatever the db size.
    n_lab = max([int(a.max()) + 1 for a in (*oks, *junks) if a.size], default=0)
    labels = np.zeros((n_lab + 1, nq), dtype=np.int8)                  # [id, query], flattened below
    for ids, bit in ((oks, 1), (junks, 2)):
        q = np.repeat(np.arange(nq), [a.size for a in ids])
        if q.size:
            labels[np.concatenate(ids), q] |= bit
    labels = labels.ravel()
    # one pass over ranks in row blocks (bounded memory): the labelled (position, query) pairs. Only
    # entries with an id < n_lab can carry a label, so a comparison (one read of ranks, a bool per
    # entry) picks the candidates and only those are looked up: the R1M distractors cost one compare.
    cols, pos, lab = [], [], []
    # entries per block: each candidate costs a few int64 temporaries, so blocks are smaller when most
    # entries are candidates (labelled ids spread over the whole db) than when few are (R1M distractors)
    # (blocks of 2^17 entries when few are candidates: 1 MB, L2-resident, measured fastest at 70 x 1M)
    step = max(1, (1 << (17 if 4 * n_lab < n_ranked else 18)) // max(1, nq))
    for r0 in range(0, n_ranked, step):
        block = ranks[r0:r0 + step]                                       # (b, nq) view
        nz = np.flatnonzero(block < n_lab)                                # candidate entries, row-major
        ids = block.reshape(-1)[nz]
        # a negative id is always a candidate (< n_lab), so checking the candidates checks every entry
        if ids.size and ids.dtype.kind == "i" and ids.min() < 0:
            raise ValueError(NEGATIVE_RANKS)
        q = nz % nq
        g = np.take(labels, ids.astype(np.int64) * nq + q)                # their labels
        keep = np.flatnonzero(g)
        cols.append(q[keep])
        pos.append(nz[keep] // nq + r0)
        lab.append(g[keep])
    q, p, lab = (np.concatenate(x) for x in (cols, pos, lab))
    order = np.argsort(q * n_ranked + p, kind="stable")              # by query, then position
    q, p, lab = q[order], p[order], lab[order]
    qp, pp = q[(lab & 1) > 0], p[(lab & 1) > 0]
    qj, pj = q[(lab & 2) > 0], p[(lab & 2) > 0]
    # Junk ranked strictly before each positive of the same query.
    jkeys = qj * n_ranked + pj
    before = (np.searchsorted(jkeys, qp * n_ranked + pp, side="left")
              - np.searchsorted(jkeys, qp * n_ranked, side="left"))
    r = (pp - before).astype(np.float64)      # 0-based junk-free position
    j = (np.arange(qp.size) - np.searchsorted(qp, qp, side="left")).astype(np.float64)
    nres = np.asarray(nres, dtype=np.float64)
    empty = nres == 0
    step = 1.0 / np.where(empty, 1.0, nres)
    aps = np.bincount(qp, weights=_ap_terms(r, j, step[qp]), minlength=nq).astype(np.float64)
    # mP@k: kq = min(largest positive position (1-based), k); P = #(pos <= kq) / kq.
    pos1 = r + 1.0
    counts = np.bincount(qp, minlength=nq)
    found = counts > 0
    maxpos = np.zeros(nq)
    maxpos[found] = pos1[np.cumsum(counts)[found] - 1]  # positions ascend within a query
    prs = np.zeros((nq, len(kappas)))
    for c, k in enumerate(kappas):
        kq = np.minimum(maxpos, k)
        hits = np.bincount(qp, weights=(pos1 <= kq[qp]).astype(np.float64), minlength=nq)
        prs[found, c] = hits[found] / kq[found]
    aps[empty] = np.nan
    prs[empty] = np.nan
    return aps, prs


def _sequential_mean(values: np.ndarray) -> float | np.ndarray:
    """Mean over axis 0 summed left to right in float64, then one division: revisitop's
    ``map = map + ap`` / ``pr = pr + prs[i, :]`` loop, bit for bit (``np.mean`` sums pairwise,
    1-3 ulp away). values: (n,) or (n, k); n is small (the queries)."""
    total = np.zeros(values.shape[1:], dtype=np.float64)
    for v in values.astype(np.float64, copy=False):
        total = total + v
    return total / values.shape[0]


def _check_kappas(kappas):
    kappas = tuple(int(k) for k in kappas)
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be positive integers, got {kappas}")
    return kappas


def compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """mAP and mP@k as the revisitop reference ``compute_map``, bit for bit (per-query values and
    the query-order means).

    ranks: (n_ranked, n_queries) int db indices, column q ranks query q (may be top-k).
    gnd: list of n_queries dicts with ``ok`` and optional ``junk`` id lists.
    Returns (map, aps (nq,), pr (len(kappas),), prs (nq, len(kappas))), fractions.
    Queries without positives get NaN and are excluded from the means (map = NaN if all
    are empty). A query whose positives all fall outside truncated ranks gets AP 0 and
    P@k 0 (the reference crashes on that case).
    """
    kappas = _check_kappas(kappas)
    if not isinstance(gnd, Sequence):
        raise ValueError("gnd must be a list of dicts")
    ranks = _check_ranks(ranks, len(gnd))
    for i, e in enumerate(gnd):
        if not isinstance(e, Mapping) or "ok" not in e:
            raise ValueError(f"gnd[{i}] must be a dict with key 'ok'")
        unknown = sorted(map(str, set(e) - set(_GND_KEYS)))
        if unknown:  # e.g. a misspelt 'junk' would otherwise be ignored silently
            raise ValueError(f"gnd[{i}] has unknown keys {unknown}; expected 'ok', 'junk' (and "
                             f"optionally {', '.join(repr(k) for k in _GND_KEYS[2:])})")
    oks = [_ids(e["ok"], f"gnd[{i}]['ok']") for i, e in enumerate(gnd)]
    junks = [_ids(e.get("junk"), f"gnd[{i}]['junk']") for i, e in enumerate(gnd)]
    aps, prs = _core(ranks, oks, junks, [a.size for a in oks], kappas)
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(_sequential_mean(aps[valid])), aps, _sequential_mean(prs[valid]), prs


def gnd_protocols(gnd) -> tuple[str, ...]:
    """The protocols a ground truth is evaluated under: :data:`PROTOCOLS` for the revisited format
    (``easy``/``hard``/``junk``), ``(CLASSIC,)`` for the original Oxford5k/Paris6k one (``ok`` or
    ``good``, ``junk``; no ``easy``/``hard``), as cirtorch's ``compute_map_and_print`` chooses."""
    if not isinstance(gnd, Sequence) or not all(isinstance(e, Mapping) for e in gnd):
        raise ValueError("gnd must be a list of dicts")
    revisited = [("easy" in e or "hard" in e) for e in gnd]
    if all(revisited):
        return PROTOCOLS
    if not any(revisited) and all(("ok" in e or "good" in e) for e in gnd):
        return (CLASSIC,)
    raise ValueError("gnd mixes formats: every entry needs 'easy'/'hard' (revisited) or every entry "
                     "'ok' (original Oxford5k/Paris6k), not some of each")


def result_protocols(result: Mapping) -> tuple[str, ...]:
    """The protocol keys of one :func:`evaluate` result, in :data:`ALL_PROTOCOLS` order."""
    found = tuple(p for p in ALL_PROTOCOLS if p in result)
    if not found:
        raise ValueError(f"not an evaluate() result: keys {sorted(map(str, result))}, expected some of "
                         f"{ALL_PROTOCOLS}")
    return found


def medium_hard_mean(result: Mapping) -> float:
    """Mean of Medium and Hard mAP of an :func:`evaluate` result, leaving out a protocol whose mAP is NaN
    (no query has positives there, e.g. Hard of an imported set without hard labels); NaN when both are.
    The lab's one score for choosing settings and ranking rows."""
    vals = [result[p]["map"] for p in ("medium", "hard") if p in result and np.isfinite(result[p]["map"])]
    return float(np.mean(vals)) if vals else float("nan")


def label_map(vecs, labels) -> float:
    """Leave-one-out mAP of descriptors ``vecs`` (N, D) with class ``labels`` (N,): each item
    queries the N − 1 others by inner product, positives share its label (items alone in their
    class are skipped), AP as :func:`compute_map`. For choosing options on a labelled validation
    split without touching the test set."""
    x = np.asarray(vecs, dtype=np.float32)
    labels = np.asarray(labels).ravel()
    if x.ndim != 2 or labels.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"vecs (N >= 2, D) and labels (N,) expected, got {x.shape} and {labels.shape}")
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    ranks = np.argsort(-sims, axis=1, kind="stable")[:, :-1].T        # (N - 1, N): itself last, dropped
    gnd = [{"ok": np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))}
           for i in range(len(labels))]
    return compute_map(ranks, gnd, kappas=())[0]


def protocol_gnd(gnd, protocol: str):
    """gnd -> list of ``{ok, junk}`` (int64 arrays) for one protocol.

    ``easy``/``medium``/``hard``: revisited gnd (``easy``/``hard``/``junk``), Radenović et al. 2018.
    ``classic``: original gnd, ``ok`` = ``good`` + ``ok`` in order, duplicates dropped (cirtorch's
    files have ``ok`` only, good and ok merged), ``junk`` as is.
    """
    if protocol == CLASSIC:
        out = []
        for i, e in enumerate(gnd):
            if "easy" in e or "hard" in e or not ("ok" in e or "good" in e):
                raise ValueError(f"gnd[{i}] is not in the original Oxford5k/Paris6k format ('ok'/'junk'; "
                                 f"keys {sorted(e)}): use protocols {PROTOCOLS}")
            ok = np.concatenate([np.asarray(e.get(k) if e.get(k) is not None else [], dtype=np.int64).ravel()
                                 for k in ("good", "ok")])
            ok = ok[np.sort(np.unique(ok, return_index=True)[1])]     # an id in both counts once
            out.append({"ok": ok,
                        "junk": np.asarray(e.get("junk") if e.get("junk") is not None else [],
                                           dtype=np.int64).ravel()})
        return out
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {ALL_PROTOCOLS}, got {protocol!r}")
    ok_keys, junk_keys = {"easy": (("easy",), ("junk", "hard")),
                          "medium": (("easy", "hard"), ("junk",)),
                          "hard": (("hard",), ("junk", "easy"))}[protocol]
    out = []
    for i, e in enumerate(gnd):
        for key in ("easy", "hard"):
            if key not in e:
                hint = (f"; it is in the original Oxford5k/Paris6k format: use protocol {CLASSIC!r}"
                        if "ok" in e or "good" in e else "")
                raise ValueError(f"gnd[{i}] lacks key {key!r}{hint}")
        cat = lambda keys: np.concatenate(  # noqa: E731
            [np.asarray(e.get(k, []), dtype=np.int64).ravel() for k in keys])
        out.append({"ok": cat(ok_keys), "junk": cat(junk_keys)})
    return out


def evaluate(ranks, gnd, kappas=(1, 5, 10), per_query: bool = False):
    """mAP and mP@k of every protocol of ``gnd`` (:func:`gnd_protocols`); ranks (n_ranked, nq).

    Revisited gnd → {"easy"|"medium"|"hard": {"map": float, "mp@k": float, ...}}; original
    Oxford5k/Paris6k gnd → {"classic": {...}}, the ``compute_map(ranks, gnd)`` cirtorch runs on
    its ``ok``/``junk`` lists (= :func:`classic_ap`; the query image is in the db and in ``ok``,
    as in those files). Fractions. ``per_query``: also ``"ap"``: {protocol: per-query AP (nq,)}, what
    paired intervals need (:mod:`retrieval.bootstrap`; recorded with the row by ``Run.record``).
    """
    res, aps = {}, {}
    for p in gnd_protocols(gnd):
        m, aps[p], pr, _ = compute_map(ranks, protocol_gnd(gnd, p), kappas)
        res[p] = {"map": float(m), **{f"mp@{k}": float(v) for k, v in zip(kappas, pr)}}
    return dict(res, ap=aps) if per_query else res


def per_query_ap(ranks, gnd) -> dict[str, np.ndarray]:
    """Per-query AP (nq,) of every protocol of ``gnd`` (NaN for a query without positives under it): what
    :func:`evaluate` averages, for paired comparisons (:func:`retrieval.bootstrap.paired_bootstrap`)."""
    return evaluate(ranks, gnd, per_query=True)["ap"]


def topk_oracle(ranks, gnd, K: int, protocol: str = "medium") -> np.ndarray:
    """The best any re-ranking of the top-``K`` can do: ``ranks`` (n_ranked, nq) with, in each
    query's first K rows, that protocol's positives moved ahead of the other images (both keeping
    their first-stage order); rows K… unchanged. Evaluating it bounds what a top-K re-ranker
    (CSA, SuperGlobal) can reach on that protocol, and shows how much of the gap to a global
    method (DBA, diffusion) comes from positives ranked below K."""
    ranks = np.array(ranks, dtype=np.int64, copy=True)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"ranks must be (n_ranked, {len(gnd)}) for {len(gnd)} queries, got {ranks.shape}")
    if int(K) < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    for i, g in enumerate(protocol_gnd(gnd, protocol)):
        top = ranks[:K, i]
        hit = np.isin(top, g["ok"])
        ranks[:K, i] = np.concatenate([top[hit], top[~hit]])
    return ranks


def random_ranking(gnd, n_db: int, trials: int = 5, seed: int = 0, kappas=(1, 5, 10)) -> dict:
    """The chance level of :func:`evaluate`: its result (same shape) averaged over ``trials``
    seeded uniformly random rankings of the ``n_db`` db images for every query. The floor a
    trained method must clear by a wide margin to mean anything."""
    if int(trials) < 1 or int(n_db) < 1:
        raise ValueError(f"trials and n_db must be >= 1, got {trials}, {n_db}")
    rng = np.random.default_rng(seed)
    runs = [evaluate(np.stack([rng.permutation(int(n_db)) for _ in range(len(gnd))], 1), gnd, kappas)
            for _ in range(int(trials))]
    return {p: {k: float(np.mean([r[p][k] for r in runs])) for k in runs[0][p]} for p in runs[0]}


def _columns(results: Mapping) -> list[str]:
    """Protocols present in any of ``results`` (method → evaluate() result), in table order."""
    found = {p for res in results.values() for p in result_protocols(res)}
    return [p for p in ALL_PROTOCOLS if p in found]


def _cell(res: Mapping, protocol: str, key: str, width: int = 8) -> str:
    v = res.get(protocol, {}).get(key)
    return f"{'-':>{width}}" if v is None else f"{100 * v:{width}.2f}"


def format_table(results) -> str:
    """Fixed-width table (x100, 2 decimals) of one evaluate() result or of a dict name ->
    evaluate() result; columns E/M/H, ``classic``, or both (``-`` where a result lacks one)."""
    single = isinstance(results, Mapping) and bool(set(results) - {"ap"}) and set(results) - {"ap"} <= set(ALL_PROTOCOLS)
    named = {"": results} if single else dict(results)
    cols = _columns(named)
    w = max([len(str(n)) for n in named] + [6])
    lines = [("" if single else f"{'name':<{w}} ") + f"{'metric':<7}" +
             "".join(f"{PROTOCOL_LABELS[p]:>8}" for p in cols)]
    for name, res in named.items():
        keys = list(dict.fromkeys(k for p in result_protocols(res) for k in res[p]))
        for key in keys:
            label = "mAP" if key == "map" else key.replace("mp", "mP")
            vals = "".join(_cell(res, p, key) for p in cols)
            lines.append(("" if single else f"{str(name):<{w}} ") + f"{label:<7}" + vals)
    return "\n".join(lines)


def format_map_table(results: dict, extra: dict | None = None) -> str:
    """One row per method: mAP ×100 per protocol (E/M/H and/or ``classic``; ``-`` where a result
    lacks one), then one column per ``extra`` entry (column title → {method: value}; missing
    values print as ``-``). ``results``: method → evaluate() result."""
    extra = dict(extra or {})
    cols = _columns(results) if results else list(PROTOCOLS)
    w = max([len(str(n)) for n in results] + [6])
    widths = {c: max(8, len(c) + 2) for c in extra}
    lines = [f"{'method':<{w}}" + "".join(f"{PROTOCOL_LABELS[p]:>8}" for p in cols)
             + "".join(f"{c:>{widths[c]}}" for c in extra)]
    for name, res in results.items():
        row = f"{str(name):<{w}}" + "".join(_cell(res, p, "map") for p in cols)
        for col, vals in extra.items():
            v = vals.get(name)
            row += f"{'-':>{widths[col]}}" if v is None else (
                f"{v:>{widths[col]}.2f}" if isinstance(v, float) else f"{v!s:>{widths[col]}}")
        lines.append(row)
    return "\n".join(lines)


def classic_ap(ranks, gnd):
    """Original Oxford5k/Paris6k AP (the dataset's ``compute_ap`` program).

    ranks: (n_ranked, nq) int; gnd: dicts with ``good``, ``ok``, ``junk``.
    Positives = good | ok, junk skipped. Returns (map, aps (nq,)); queries without
    positives are NaN and excluded (the C++ program would divide by zero); the mean is summed in
    query order as cirtorch's ``compute_map`` does.
    """
    if not isinstance(gnd, Sequence):
        raise ValueError("gnd must be a list of dicts")
    ranks = _check_ranks(ranks, len(gnd))
    oks, junks, nres = [], [], []
    for i, e in enumerate(gnd):
        pos = np.unique(np.concatenate([_ids(e.get("good"), f"gnd[{i}]['good']"),
                                        _ids(e.get("ok"), f"gnd[{i}]['ok']")]))
        junk = np.unique(_ids(e.get("junk"), f"gnd[{i}]['junk']"))
        # The C++ checks junk first: an id in both sets is skipped, yet counted in |pos|.
        oks.append(np.setdiff1d(pos, junk, assume_unique=True))
        junks.append(junk)
        nres.append(pos.size)
    aps, _ = _core(ranks, oks, junks, nres, ())
    valid = ~np.isnan(aps)
    return (float(_sequential_mean(aps[valid])) if valid.any() else float("nan")), aps
