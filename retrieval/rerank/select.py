"""Settings of the classic re-rankers chosen on the validation benchmark, the same way for every method.

The protocol (``../shared/protocol.md``): per method a declared grid; the criterion is the mean of Medium
and Hard mAP on the validation benchmark; ties go to the cheaper setting (smaller k, shorter list: the grid's
values in their listed order, earlier = cheaper, compared parameter by parameter). The whole sweep is
returned, so a reader sees how flat or sharp the optimum is and whether it sits at the grid's edge. The
function is given the validation set's descriptors and ground truth only: the test set is reported at the
selected setting, never searched over.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_write_json, jsonable, read_json
from ..metrics import evaluate, medium_hard_mean
from .base import db_neighbours

_K = [1, 2, 3, 5, 10, 20, 30, 50]      # 20 was the edge on the synthetic benchmark (~48 positives a query)
_ALPHA = [0.0, 1.0, 3.0, 5.0]

#: the declared grids (issue 29): parameter → values, cheapest first. ``alpha_qe+alpha_dba`` shares one α
#: between the query side and the db side (Radenović et al. TPAMI 2018 use α = 3 for both).
GRIDS: dict[str, dict[str, list]] = {
    "aqe": {"qe_k": _K},
    "alpha_qe": {"qe_k": _K, "qe_alpha": _ALPHA},
    "dba": {"dba_k": _K},
    "alpha_dba": {"dba_k": _K, "dba_alpha": _ALPHA},
    "aqe+dba": {"qe_k": _K, "dba_k": _K},
    "alpha_qe+alpha_dba": {"qe_k": _K, "dba_k": _K, "alpha": _ALPHA},
    "diffusion": {"diffusion_k": [5, 10, 20, 50], "truncate": [100, 200, 1000]},
    "superglobal": {"superglobal_m": ["8%", "25%", 400], "K": [5, 9, 15, 25], "beta": [0.1, 0.15, 0.3, 0.5, 1.0]},
}

#: the methods whose db side is a DBA (their sweeps share one k-NN search of the db)
DBA_METHODS = ("dba", "alpha_dba", "aqe+dba", "alpha_qe+alpha_dba")

#: CSA's training grid (issue 29): epochs (cheaper first) × SGD learning rate; each model is then scored at
#: every test K of the notebook's ``csa_K_grid`` on the validation benchmark's lists (:func:`select_trained`)
CSA_GRID: dict[str, list] = {"epochs": [10, 30], "lr": [0.03, 0.1, 0.3]}


def criterion(result: Mapping) -> float:
    """The selection criterion: mean of Medium and Hard mAP of an evaluate() result; a protocol whose mAP
    is NaN (no query has positives there, e.g. Hard of an imported set without hard labels) is left out."""
    score = medium_hard_mean(result)
    if np.isnan(score):
        raise ValueError("criterion: neither Medium nor Hard mAP is finite (no query has positives)")
    return score


#: parameters that count neighbours among the db images: a setting needs fewer than the db holds
_NEIGHBOURS = ("qe_k", "dba_k", "diffusion_k", "K")


def feasible(params: Mapping, n_db: int) -> bool:
    """Whether a concrete setting fits a db of ``n_db`` images (every neighbour count below ``n_db``), so a
    small validation benchmark sweeps the part of a grid it can hold."""
    return all(params[p] < n_db for p in _NEIGHBOURS if p in params)


def settings(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of ``grid`` (parameter → values), cheapest first (lexicographic in the grid's order)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def resolve_setting(setting: Mapping, n_db: int) -> dict:
    """A grid setting made concrete for a db of ``n_db`` images: a share like ``"8%"`` → that share of
    the db, rounded (at least 1); the shared ``alpha`` → ``qe_alpha`` and ``dba_alpha``."""
    out = {}
    for name, value in setting.items():
        if isinstance(value, str) and value.endswith("%"):
            value = max(1, int(round(float(value[:-1]) / 100 * n_db)))
        if name == "alpha":
            out.update(qe_alpha=value, dba_alpha=value)
        else:
            out[name] = value
    return out


def select_setting(method: str, query: np.ndarray, db: np.ndarray, gnd: Sequence[dict],
                   run: Callable[..., tuple[np.ndarray, np.ndarray]], grid: Mapping[str, Sequence] | None = None,
                   progress: bool = True) -> dict:
    """Sweep ``grid`` (default :data:`GRIDS`\\ [method]) of ``method`` on a validation benchmark: ``query``
    (n_q, D) and ``db`` (n_db, D) descriptors and its ``gnd``; ``run(method, query, db, **setting)`` returns
    ``(ranks, scores)`` (e.g. :func:`retrieval.rerank.rerank`). Returns ``{"method", "selected"`` (the grid
    setting), ``"params"`` (it made concrete: :func:`resolve_setting`), ``"criterion"``, ``"sweep"``: one
    ``{"setting", "params", "criterion", "easy", "medium", "hard"}`` per setting, cheapest first``}``;
    settings that do not fit the db (:func:`feasible`) are left out. For the DBA methods (:data:`DBA_METHODS`)
    ``run`` also gets ``neighbours=``: the db's k-NN lists (:func:`~retrieval.rerank.db_neighbours`) at the
    grid's largest ``dba_k``, computed once (each setting's DBA takes their first ``dba_k`` columns: the same
    lists as its own search)."""
    grid = GRIDS[method] if grid is None else grid
    sweep, shared = [], {}
    if method in DBA_METHODS:  # the db's k-NN lists once, at the grid's largest feasible k (each DBA cuts them)
        ks = [resolve_setting(s, len(db))["dba_k"] for s in settings(grid)]
        ks = [k for k in ks if 1 <= k < len(db)]
        if ks:
            shared["neighbours"] = db_neighbours(db, max(ks))
    for setting in tqdm(settings(grid), desc=f"select {method}", disable=not progress, leave=False):
        params = resolve_setting(setting, len(db))
        if not feasible(params, len(db)):
            continue
        res = evaluate(run(method, query, db, **params, **shared)[0], gnd)
        sweep.append(dict(setting=setting, params=params, criterion=criterion(res),
                          **{p: res[p]["map"] for p in ("easy", "medium", "hard") if p in res}))
    if not sweep:
        raise ValueError(f"{method}: no setting of its grid fits a validation db of {len(db)} images")
    best = max(range(len(sweep)), key=lambda i: (sweep[i]["criterion"], -i))  # ties: the earlier (cheaper) one
    return dict(method=method, selected=sweep[best]["setting"], params=sweep[best]["params"],
                criterion=sweep[best]["criterion"], sweep=sweep)


def select_trained(method: str, grid: Mapping[str, Sequence], train: Callable[[dict], tuple[object, float]],
                   score: Callable[[object, object], Mapping], eval_grid: Mapping[str, Sequence],
                   progress: bool = True) -> dict:
    """Sweep a trained method on a validation benchmark: ``train(setting)`` → ``(model, seconds)`` for every
    setting of ``grid`` (e.g. :data:`CSA_GRID`; training lists come from the training split), then
    ``score(model, value)`` → an ``evaluate()`` result on the validation benchmark for every value of the one
    test-time parameter in ``eval_grid`` (e.g. ``{"K": [128, 320, 512]}``). Same output as
    :func:`select_setting` (settings joined: training grid first, then the test-time parameter; ties to the
    cheaper), each sweep row with its ``train_seconds``."""
    (name, values), = eval_grid.items()
    sweep = []
    for setting in tqdm(settings(grid), desc=f"select {method}", disable=not progress, leave=False):
        model, seconds = train(dict(setting))
        for v in values:
            res = score(model, v)
            row = dict(setting, **{name: v})
            sweep.append(dict(setting=row, params=dict(row), criterion=criterion(res), train_seconds=seconds,
                              **{p: res[p]["map"] for p in ("easy", "medium", "hard") if p in res}))
    best = max(range(len(sweep)), key=lambda i: (sweep[i]["criterion"], -i))
    return dict(method=method, selected=sweep[best]["setting"], params=sweep[best]["params"],
                criterion=sweep[best]["criterion"], sweep=sweep)


def at_edge(selection: Mapping) -> list[str]:
    """The parameters whose selected value is the first or last of its grid (more may lie beyond)."""
    values = {}
    for row in selection["sweep"]:
        for name, v in row["setting"].items():
            values.setdefault(name, [])
            if v not in values[name]:
                values[name].append(v)
    return [n for n, vs in values.items() if len(vs) > 1 and selection["selected"][n] in (vs[0], vs[-1])]


def best_within(selection: Mapping, limits: Mapping[str, float]) -> dict:
    """The best row of a sweep (:func:`select_trained` / :func:`select_setting` output) among the settings
    whose parameters stay at or below ``limits`` (e.g. ``{"epochs": 10}``: a training budget), ties to the
    earlier (cheaper) row as the sweep's own choice; the selection's own row when it is within them.
    ValueError when no row is."""
    rows = [r for r in selection["sweep"] if all(r["setting"].get(p, 0) <= v for p, v in limits.items())]
    if not rows:
        raise ValueError(f"no setting of the sweep within {dict(limits)}: its settings go from "
                         f"{selection['sweep'][0]['setting']} to {selection['sweep'][-1]['setting']}")
    return max(rows, key=lambda r: (r["criterion"], -selection["sweep"].index(r)))


def plot_selection(selections: Mapping[str, Mapping], title: str = ""):
    """One panel per method: the validation criterion (mean of Medium and Hard mAP ×100) against its main
    parameter (the grid's first), the best over its other parameters at each value; the selected setting
    marked. ``selections``: method → :func:`select_setting` output. Returns the figure."""
    import matplotlib.pyplot as plt  # lazy: figures only

    n = len(selections)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.0 * cols, 2.3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (method, sel) in zip(axes.ravel(), selections.items()):
        main = next(iter(sel["selected"]))
        values = list(dict.fromkeys(r["setting"][main] for r in sel["sweep"]))
        best = [100 * max(r["criterion"] for r in sel["sweep"] if r["setting"][main] == v) for v in values]
        x = np.arange(len(values))
        ax.plot(x, best, "o-", color="#1f77b4")
        i = values.index(sel["selected"][main])
        ax.plot([i], [best[i]], "*", ms=12, color="#d62728")
        ax.set_xticks(x, [str(v) for v in values], fontsize=7)
        ax.set_xlabel(main, fontsize=7)
        ax.set_title(method, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("val (M+H)/2 mAP ×100", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_selection(path: str | os.PathLike, selection: Mapping, config: Mapping, **extra) -> Path:
    """Write a sweep (:func:`select_trained` / :func:`select_setting` output) with the ``config`` it depends
    on (all but the swept parameters) and ``extra`` (provenance: machine, commit, date, command) as JSON,
    atomically, so that a later run can reuse the choice (:func:`recorded_selection`)."""
    return atomic_write_json(path, dict(config=jsonable(dict(config)), selection=jsonable(dict(selection)),
                                        **jsonable(extra)))


def recorded_selection(path: str | os.PathLike, config: Mapping, parameter: str = "path") -> dict:
    """A sweep written by :func:`save_selection`, accepted only when its stored ``config`` equals ``config``
    (the cache rule: a choice made for other lists or another model is not reused). FileNotFoundError /
    ValueError name ``parameter`` and what differs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{parameter}={str(path)!r}: no recorded sweep there (rerun the sweep with "
                                f"{parameter}='rerun', or record a run that did: python -m retrieval.run record)")
    rec = read_json(path)
    if not isinstance(rec, dict) or not {"config", "selection"} <= set(rec):
        raise ValueError(f"{parameter}={str(path)!r}: expected a JSON object with 'config' and 'selection'")
    want = jsonable(dict(config))
    diff = {k: (rec["config"].get(k), want.get(k)) for k in sorted(set(rec["config"]) | set(want))
            if rec["config"].get(k) != want.get(k)}
    if diff:
        raise ValueError(f"{parameter}={str(path)!r} was swept with another configuration (recorded, now): "
                         f"{diff}; rerun the sweep with {parameter}='rerun'")
    return rec
