"""The paired bootstrap over query landmarks: identical inputs give [0, 0], a constant shift d gives
[d, d], the interval covers a known difference about 95 % of the time, and bad input is refused."""

import numpy as np
import pytest

from retrieval.bootstrap import format_interval, paired_bootstrap, verdict


def _groups(n_landmarks=14, per=5):
    return np.repeat(np.arange(n_landmarks), per)


def test_identical_inputs_give_zero():
    rng = np.random.default_rng(0)
    ap = rng.random(70)
    iv = paired_bootstrap(ap, ap, _groups())
    assert (iv["diff"], iv["low"], iv["high"]) == (0.0, 0.0, 0.0) and not iv["excludes_zero"]


@pytest.mark.parametrize("d", [0.1, -0.037, 0.25])
def test_a_constant_shift_gives_exactly_that_shift(d):
    rng = np.random.default_rng(1)
    b = rng.random(70) * 0.5
    iv = paired_bootstrap(b + d, b, _groups())
    for key in ("diff", "low", "high"):  # up to rounding of (b + d) - b
        assert iv[key] == pytest.approx(d, abs=1e-12), key
    assert iv["excludes_zero"]


def test_coverage_is_close_to_95_percent_with_a_known_difference():
    # per landmark a shared effect (the queries of a landmark move together) plus per-query noise;
    # the true mean difference is delta; count how often the interval holds it
    delta, trials, hits = 0.02, 300, 0
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        groups = _groups(20, 5)
        shared = rng.normal(0, 0.05, 20)[groups]
        base = rng.random(groups.size)
        a = base + delta + shared + rng.normal(0, 0.03, groups.size)
        iv = paired_bootstrap(a, base, groups, n_boot=2000, seed=t)
        # the population mean difference of this design is delta (the shared and noise terms have mean 0)
        hits += iv["low"] <= delta <= iv["high"]
    assert 0.88 <= hits / trials <= 0.99


def test_resampling_is_by_landmark_not_by_query():
    # one landmark of 5 queries carries the whole difference: by landmark the interval reaches 0
    # (that landmark is often not drawn), whereas treating queries as independent would narrow it
    groups = _groups(14, 5)
    d = np.where(groups == 0, 0.5, 0.0)
    iv = paired_bootstrap(d, np.zeros_like(d), groups, seed=3)
    assert iv["low"] == 0.0 and iv["high"] > 0
    assert iv["diff"] == pytest.approx(0.5 * 5 / 70)


def test_nan_queries_are_left_out_and_seed_is_deterministic():
    rng = np.random.default_rng(2)
    a, b = rng.random(70), rng.random(70)
    a[3] = np.nan
    one, two = paired_bootstrap(a, b, _groups(), seed=7), paired_bootstrap(a, b, _groups(), seed=7)
    assert one == two and one["n_queries"] == 69 and one["n_groups"] == 14
    assert paired_bootstrap(a, b, _groups(), seed=8) != one


@pytest.mark.parametrize("kwargs,match", [(dict(level=1.0), "level"), (dict(n_boot=0), "n_boot")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(np.ones(4), np.ones(4), [0, 0, 1, 1], **kwargs)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.ones(4), np.ones(3), [0, 0, 1, 1])


def test_verdict_and_format():
    pos = dict(diff=0.02, low=0.01, high=0.03, excludes_zero=True)
    neg = dict(diff=-0.02, low=-0.03, high=-0.01, excludes_zero=True)
    wide = dict(diff=0.02, low=-0.01, high=0.05, excludes_zero=False)
    assert verdict([pos, pos]) == "holds" and verdict([pos, neg]) == "inconclusive"
    assert verdict([pos, wide]) == "inconclusive"
    assert format_interval(pos) == "+2.00 [+1.00, +3.00]"


def test_compare_rows_reference_best_and_runner_up():
    from retrieval.bootstrap import compare_rows, format_comparison

    groups = _groups(10, 3)
    rng = np.random.default_rng(5)
    base = rng.random(30) * 0.5

    def row(shift):
        ap = {p: base + shift for p in ("easy", "medium", "hard")}
        return {**{p: {"map": float(v.mean())} for p, v in ap.items()}, "ap": ap}

    results = {"first": row(0.0), "a": row(0.1), "b": row(0.05)}
    cmp = compare_rows(results, groups, n_boot=500)
    assert cmp["reference"] == "first" and set(cmp["rows"]) == {"a", "b"}
    assert cmp["rows"]["a"]["medium"]["diff"] == pytest.approx(0.1)
    assert (cmp["best"], cmp["runner_up"]) == ("a", "b") and cmp["verdict"] == "holds"
    assert cmp["best_vs_runner_up"]["hard"]["low"] == pytest.approx(0.05)
    # recorded rows keep None for a query without positives: left out of both sides
    recorded = {n: {**r, "ap": {p: [None if i == 0 else float(x) for i, x in enumerate(v)] for p, v in r["ap"].items()}}
                for n, r in results.items()}
    assert compare_rows(recorded, groups, n_boot=200)["rows"]["a"]["medium"]["n_queries"] == 29
    text = format_comparison(results, groups, n_boot=200)
    assert "10 query landmarks" in text and "→ holds" in text
    assert format_comparison({"x": {"medium": {"map": 0.1}}}, groups) == "(no per-query APs: no intervals)"
    # contenders: a row kept as a reference point (e.g. "before selection") is compared, never best or runner-up
    cmp = compare_rows(results, groups, n_boot=200, contenders=["first", "b"])
    assert set(cmp["rows"]) == {"a", "b"} and (cmp["best"], cmp["runner_up"]) == ("b", "first")


def test_a_protocol_no_query_can_score_is_left_out():
    """An imported set without hard labels: every Hard AP is NaN; the Medium intervals stand, Hard is n/a,
    and best / runner-up go by Medium alone."""
    from retrieval.bootstrap import compare_rows, format_comparison

    groups = _groups(6, 2)
    base = np.linspace(0.2, 0.7, 12)

    def row(shift):
        ap = {"easy": base + shift, "medium": base + shift, "hard": np.full(12, np.nan)}
        return {**{p: {"map": float(np.mean(v))} for p, v in ap.items()}, "ap": ap}

    results = {"first": row(0.0), "a": row(0.1), "b": row(0.02)}
    cmp = compare_rows(results, groups, n_boot=200)
    assert set(cmp["rows"]["a"]) == {"medium"} and cmp["rows"]["a"]["medium"]["diff"] == pytest.approx(0.1)
    assert (cmp["best"], cmp["runner_up"]) == ("a", "b") and cmp["verdict"] == "holds"
    text = format_comparison(results, groups, n_boot=200)
    assert "n/a" in text and "+10.00 [+10.00, +10.00]" in text
