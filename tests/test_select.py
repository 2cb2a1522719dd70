"""Selection of re-ranking settings on a validation benchmark: the criterion, the tie rule, concrete
settings, and that the selection is the argmax of the recorded sweep computed independently."""

import numpy as np
import pytest

from retrieval.metrics import evaluate
from retrieval.rerank import rerank
from retrieval.rerank.select import (DBA_METHODS, GRIDS, at_edge, best_within, criterion, feasible, recorded_selection, resolve_setting,
                                     save_selection, select_setting, select_trained, settings)


def _bench(seed=0, n_lm=6, per_q=2, per_db=8, dim=16):
    """Clustered vectors: each landmark a centre; queries and db views around it, plus noise images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_lm, dim))
    q = np.concatenate([centres[i] + 0.9 * rng.normal(size=(per_q, dim)) for i in range(n_lm)])
    db = np.concatenate([centres[i] + 0.9 * rng.normal(size=(per_db, dim)) for i in range(n_lm)]
                        + [rng.normal(size=(30, dim))])
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    gnd = []
    for i in range(n_lm):
        ids = list(range(i * per_db, (i + 1) * per_db))
        for _ in range(per_q):
            gnd.append(dict(bbx=[0, 0, 1, 1], easy=ids[:per_db // 2], hard=ids[per_db // 2:], junk=[]))
    return norm(q), norm(db), gnd


def test_selection_is_the_argmax_of_its_sweep_recomputed():
    q, db, gnd = _bench()
    sel = select_setting("dba", q, db, gnd, rerank, progress=False)
    expect = [criterion(evaluate(rerank("dba", q, db, dba_k=k)[0], gnd)) for k in GRIDS["dba"]["dba_k"]]
    assert [r["criterion"] for r in sel["sweep"]] == pytest.approx(expect)
    best = max(expect)
    assert sel["selected"] == {"dba_k": GRIDS["dba"]["dba_k"][expect.index(best)]}  # first (cheapest) of ties
    assert sel["criterion"] == pytest.approx(best)


def test_dba_sweeps_share_one_neighbour_search_and_score_exactly_as_their_own():
    """The DBA methods' sweeps search the db's k-NN lists once (at the grid's largest k) and hand them to every
    setting: the sweep is the one each setting gives with its own search, to the last digit (a db with exact
    duplicates, where the item itself may fall behind its copies, included)."""
    q, db, gnd = _bench(seed=3)
    db = np.concatenate([db, db[:5]])                            # five exact duplicates
    gnd = [dict(g, junk=list(range(len(db) - 5, len(db)))) for g in gnd]
    calls = []

    def own(method, query, db_, neighbours=None, **kw):          # ignores the shared lists
        calls.append(neighbours is not None)
        return rerank(method, query, db_, **kw)

    for method in DBA_METHODS:
        grid = {k: v[:3] for k, v in GRIDS[method].items()}
        shared = select_setting(method, q, db, gnd, rerank, grid=grid, progress=False)
        calls.clear()
        alone = select_setting(method, q, db, gnd, own, grid=grid, progress=False)
        assert calls and all(calls)                              # the lists were offered to every setting
        assert shared["sweep"] == alone["sweep"] and shared["selected"] == alone["selected"]


def test_ties_go_to_the_cheaper_setting():
    q, db, gnd = _bench()
    flat = lambda method, query, db_, **kw: rerank("aqe", query, db_, qe_k=1)  # noqa: E731  every setting equal
    sel = select_setting("aqe", q, db, gnd, flat, progress=False)
    assert sel["selected"] == {"qe_k": 1}
    assert at_edge(sel) == ["qe_k"]


def test_settings_and_resolve():
    assert settings({"a": [1, 2], "b": ["x", "y"]}) == [dict(a=1, b="x"), dict(a=1, b="y"), dict(a=2, b="x"),
                                                          dict(a=2, b="y")]
    assert resolve_setting({"superglobal_m": "8%", "alpha": 3.0}, 1570) == dict(superglobal_m=126, qe_alpha=3.0,
                                                                               dba_alpha=3.0)
    assert resolve_setting({"superglobal_m": 400}, 100) == dict(superglobal_m=400)


def test_every_declared_grid_runs_through_rerank():
    q, db, gnd = _bench(n_lm=3, per_db=6)
    small = {m: {p: v[:2] for p, v in g.items()} for m, g in GRIDS.items()}
    for method, grid in small.items():
        sel = select_setting(method, q, db, gnd, rerank, grid=grid, progress=False)
        assert len(sel["sweep"]) == int(np.prod([len(v) for v in grid.values()]))


def test_select_trained_trains_each_setting_once_and_takes_the_argmax():
    """select_trained: one training per (epochs, lr), every test-time value scored on each model, the
    selection the argmax of the sweep (ties to the cheaper: fewer epochs, then the grid's order, then the
    smaller K), training seconds carried per row."""
    trained = []

    def train(setting):
        trained.append(setting)
        return (setting["epochs"], setting["lr"]), 10.0 * setting["epochs"]

    # criterion = mean of M and H: depends on lr and K only, so epochs 10 and 30 tie → the cheaper 10
    score = lambda model, K: {"medium": {"map": model[1] * K / 100}, "hard": {"map": model[1] * K / 100}}  # noqa: E731
    sel = select_trained("csa", {"epochs": [10, 30], "lr": [0.1, 0.3]}, train, score, {"K": [16, 32]},
                         progress=False)
    assert trained == [dict(epochs=10, lr=0.1), dict(epochs=10, lr=0.3), dict(epochs=30, lr=0.1),
                       dict(epochs=30, lr=0.3)]
    assert len(sel["sweep"]) == 8 and sel["selected"] == dict(epochs=10, lr=0.3, K=32)
    assert sel["criterion"] == pytest.approx(0.3 * 32 / 100)
    assert [r["train_seconds"] for r in sel["sweep"]] == [100.0] * 4 + [300.0] * 4
    assert at_edge(sel) == ["epochs", "lr", "K"]
    one = select_trained("csa", {}, lambda s: ((1, 0.5), 0.0), score, {"K": [8]}, progress=False)  # a given model
    assert one["selected"] == {"K": 8} and len(one["sweep"]) == 1


def test_best_within_a_budget_is_the_argmax_of_the_rows_it_allows():
    """best_within: the sweep's own choice when it is within the limits; otherwise the best row at or below
    them (recomputed here by hand), ties to the earlier row; no row within them: an error naming the limits."""
    def row(epochs, lr, K, c):
        return dict(setting=dict(epochs=epochs, lr=lr, K=K), params=dict(epochs=epochs, lr=lr, K=K), criterion=c)

    sweep = [row(10, 0.03, 128, 0.62), row(10, 0.03, 320, 0.6346), row(10, 0.1, 320, 0.6346),
             row(30, 0.03, 512, 0.6464), row(30, 0.1, 320, 0.63)]
    sel = dict(method="csa", selected=sweep[3]["setting"], params=sweep[3]["params"], criterion=0.6464, sweep=sweep)
    assert best_within(sel, {"epochs": 30}) is sweep[3]
    capped = best_within(sel, {"epochs": 10})
    by_hand = max((r for r in sweep if r["setting"]["epochs"] <= 10), key=lambda r: r["criterion"])
    assert capped is by_hand is sweep[1]                       # the tie with lr 0.1 goes to the earlier row
    assert best_within(sel, {"epochs": 10, "lr": 0.05})["setting"] == dict(epochs=10, lr=0.03, K=320)
    with pytest.raises(ValueError, match="epochs': 5"):
        best_within(sel, {"epochs": 5})


def test_recorded_selection_round_trip_and_refusals(tmp_path):
    cfg = dict(K=128, L=64, first_stage="gem+lw", val="synth-default-val")
    sel = dict(method="csa", selected=dict(epochs=30, lr=0.1, K=320), sweep=[])
    path = save_selection(tmp_path / "csa.json", sel, cfg, provenance=dict(commit="abc"))
    rec = recorded_selection(path, cfg, "csa_grid")
    assert rec["selection"]["selected"] == dict(epochs=30, lr=0.1, K=320) and rec["provenance"]["commit"] == "abc"
    with pytest.raises(ValueError, match=r"csa_grid=.*another configuration.*'L': \(64, 32\)"):
        recorded_selection(path, dict(cfg, L=32), "csa_grid")
    with pytest.raises(ValueError, match=r"'extra': \(None, 1\)"):
        recorded_selection(path, dict(cfg, extra=1), "csa_grid")
    with pytest.raises(FileNotFoundError, match=r"csa_grid=.*no recorded sweep.*'rerun'"):
        recorded_selection(tmp_path / "missing.json", cfg, "csa_grid")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        recorded_selection(tmp_path / "bad.json", cfg, "csa_grid")


def test_criterion_without_hard_positives_and_grids_clipped_to_a_small_db():
    """Hard mAP NaN (no hard positives): the criterion is Medium alone; neighbour counts the validation db
    cannot hold are left out of the sweep, and a grid with no fitting setting is an error."""
    assert criterion({"medium": {"map": 0.6}, "hard": {"map": float("nan")}}) == pytest.approx(0.6)
    assert criterion({"medium": {"map": 0.6}, "hard": {"map": 0.2}}) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="neither Medium nor Hard"):
        criterion({"medium": {"map": float("nan")}, "hard": {"map": float("nan")}})
    q, db, gnd = _bench(n_lm=2, per_db=6)          # 12 + 30 noise = 42 db images
    sel = select_setting("dba", q, db, gnd, rerank, progress=False)
    assert [r["setting"]["dba_k"] for r in sel["sweep"]] == [k for k in GRIDS["dba"]["dba_k"] if k < len(db)]
    with pytest.raises(ValueError, match="no setting of its grid fits"):
        select_setting("dba", q, db, gnd, rerank, grid={"dba_k": [len(db), len(db) + 5]}, progress=False)
    assert feasible({"dba_k": 41, "qe_alpha": 3.0}, 42) and not feasible({"qe_k": 42}, 42)
