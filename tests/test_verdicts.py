"""The verdict table: one bootstrap over the seeds' pooled queries, the protocol's verdict rule, and a table
rendered from records (every number computed here independently of the renderer)."""

import numpy as np
import pytest

from retrieval.bootstrap import claim_verdict, paired_bootstrap, pooled_bootstrap
from retrieval.run import verdicts as V


def test_pooled_bootstrap_is_one_bootstrap_over_every_parts_landmarks():
    rng = np.random.default_rng(0)
    parts = [(rng.random(10), rng.random(10), np.repeat(["a", "b"], 5)) for _ in range(3)]
    pooled = pooled_bootstrap(parts, n_boot=2000)
    # the same landmark label in two benchmarks is two landmarks
    direct = paired_bootstrap(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                              [f"{i}{g}" for i, p in enumerate(parts) for g in p[2]], n_boot=2000)
    assert pooled == direct and pooled["n_groups"] == 6 and pooled["n_queries"] == 30
    shift = [(p[1] + 0.03, p[1], p[2]) for p in parts]  # a constant shift gives [d, d]
    iv = pooled_bootstrap(shift, n_boot=500)
    assert iv["diff"] == pytest.approx(0.03) and iv["low"] == pytest.approx(0.03) and iv["high"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="no benchmarks"):
        pooled_bootstrap([])


@pytest.mark.parametrize("pooled, seeds, expected", [
    ((0.01, 0.05), (0.02, 0.03, 0.01), "holds"),
    ((0.01, 0.05), (0.02, -0.01, 0.04), "inconclusive"),   # a seed disagrees in sign
    ((-0.01, 0.05), (0.02, 0.03, 0.01), "inconclusive"),   # the interval holds 0
    ((-0.05, -0.01), (-0.02, 0.01, -0.03), "refuted"),     # below 0: refuted, whatever one seed says
])
def test_claim_verdict_follows_the_protocol(pooled, seeds, expected):
    iv = dict(low=pooled[0], high=pooled[1], diff=sum(pooled) / 2)
    assert claim_verdict(iv, [dict(diff=d) for d in seeds]) == expected


def _records(shift_by_seed, n=6):
    """Three seed records: first stage ``fs``, its +dba and +csa rows; +csa = +dba + shift (a constant per seed)."""
    recs = []
    for s, shift in enumerate(shift_by_seed):
        rng = np.random.default_rng(s)
        dba = {p: rng.random(n) * 0.5 for p in V.PROTOCOLS}

        def row(ap, ref="fs"):
            return {**{p: {"map": float(np.mean(v))} for p, v in ap.items()}, "ap": {p: list(v) for p, v in ap.items()},
                    "recorded": {"notebook": "03_rerank", "reference": ref}}
        rows = {"fs": row({p: v * 0.5 for p, v in dba.items()}, ref=None), "fs+dba": row(dba),
                "fs+csa": row({p: v + shift for p, v in dba.items()}),
                "fs+csa (before selection)": row({p: v - 1 for p, v in dba.items()})}
        recs.append(dict(name=f"seed{s}", metrics={"synth-s": rows},
                         benchmark={"query_landmarks": {"synth-s": [f"l{i // 2}" for i in range(n)]}}))
    return recs


def test_evaluate_claim_pools_the_seeds_and_takes_the_strongest_b():
    claim = V.Claim("P", "CSA > DBA", "{fs}+csa", ("{fs}+dba", "{fs}"), "reported", "decide")
    res = V.evaluate_claim(claim, _records([0.02, 0.04, 0.06]), n_boot=500)
    assert res["b"] == ["fs+dba"] * 3 and res["a"] == ["fs+csa"] * 3 and res["n_groups"] == 9
    m = res["protocols"]["medium"]
    assert m["pooled"]["diff"] == pytest.approx(0.04)  # equal query counts: the mean of the three shifts
    assert [iv["diff"] for iv in m["per_seed"]] == pytest.approx([0.02, 0.04, 0.06])
    assert m["verdict"] == "holds" and res["verdict"] == "holds"
    assert V.evaluate_claim(claim, _records([-0.02, -0.02, -0.03]), n_boot=500)["verdict"] == "refuted"
    # a record without the row, or without the distractor set: named, not guessed
    assert "no row {fs}+nope" in V.evaluate_claim(V.Claim("P", "x", "{fs}+nope", ("{fs}",), "", ""),
                                                  _records([0, 0, 0]))["missing"]
    assert "no distractors set" in V.evaluate_claim(claim, _records([0, 0, 0]), "distractors")["missing"]


def test_render_verdicts_takes_the_seed_records(monkeypatch):
    recs = _records([0.02, 0.04, 0.06])
    assert V.render_verdicts([dict(r, name=f"demo{i}") for i, r in enumerate(recs)]) == []  # no seed record
    assert [r["name"] for r in V.seed_records([recs[2], recs[0], dict(recs[1], name="seed10")])] == ["seed0", "seed2", "seed10"]
    monkeypatch.setattr(V, "CLAIMS", (V.Claim("CSA", "CSA > DBA", "{fs}+csa", ("{fs}+dba",), "paper fig", "GPU",
                                              ("test", "distractors")),))
    lines = V.render_verdicts(recs, n_boot=500)
    row = next(line for line in lines if line.startswith("| CSA | CSA > DBA | test ("))
    assert "(9 landmarks)" in row and "+4.00 [+" in row and "+2.0 / +2.0, +4.0 / +4.0, +6.0 / +6.0" in row
    assert "**holds**" in row and "paper fig" in row and "GPU" in row
    assert any("not measured" in line and "no distractors set" in line for line in lines)


def test_the_results_page_decides_every_claim_from_the_seed_records():
    """The committed page's verdict table: every claim is measured in all three seed records (none "not
    measured"), and one claim's pooled interval, recomputed here from the raw per-query APs of the records with
    paired_bootstrap over seed-prefixed landmarks, is the one the page shows."""
    from retrieval.bootstrap import format_interval
    from retrieval.run import report as R

    seeds = V.seed_records(R.load_records())
    assert len(seeds) >= 3, "results/seed<N>: fewer than the three seed runs (issue 30) committed"
    page = R.RESULTS_PAGE.read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and "landmarks) |" in line]
    assert len(rows) == sum(len(c.sets) for c in V.CLAIMS) and "not measured" not in page
    claim = next(c for c in V.CLAIMS if c.a == "gem-efficientnet_lite0")  # fine-tuning: 02's row against 01's
    a, b, g = [], [], []
    for i, rec in enumerate(seeds):
        test = next(d for d in rec["metrics"] if "+" not in d)
        rows_ = rec["metrics"][test]
        a += [np.nan if v is None else v for v in rows_[claim.a]["ap"]["hard"]]
        b += [np.nan if v is None else v for v in rows_[claim.b[0]]["ap"]["hard"]]
        g += [f"{i}/{x}" for x in rec["benchmark"]["query_landmarks"][test]]
    iv = paired_bootstrap(np.array(a), np.array(b), g)
    assert iv["n_groups"] == sum(len(set(r["benchmark"]["query_landmarks"][next(d for d in r["metrics"] if "+" not in d)]))
                                 for r in seeds)
    row = next(line for line in rows if f"| {claim.claim} |" in line)
    assert format_interval(iv) in row
