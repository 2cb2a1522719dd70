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


def test_render_verdicts_needs_the_three_seed_records(monkeypatch):
    recs = _records([0.02, 0.04, 0.06])
    assert V.render_verdicts(recs[:2]) == []
    monkeypatch.setattr(V, "CLAIMS", (V.Claim("CSA", "CSA > DBA", "{fs}+csa", ("{fs}+dba",), "paper fig", "GPU",
                                              ("test", "distractors")),))
    lines = V.render_verdicts(recs, n_boot=500)
    row = next(line for line in lines if line.startswith("| CSA | CSA > DBA | test ("))
    assert "(9 landmarks)" in row and "+4.00 [+" in row and "+2.0 / +2.0, +4.0 / +4.0, +6.0 / +6.0" in row
    assert "**holds**" in row and "paper fig" in row and "GPU" in row
    assert any("not measured" in line and "no distractors set" in line for line in lines)
