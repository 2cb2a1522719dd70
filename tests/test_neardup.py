"""Near-duplicate threshold metrics against direct loop computations."""

import numpy as np
import pytest

from retrieval.neardup import pair_scores, pr_curve, threshold_at_precision, threshold_table


def _data(seed=0, n=14):
    rng = np.random.default_rng(seed)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1, 3, -1, 3])[:n]
    X = rng.standard_normal((n, 5))
    X[groups >= 0] += 2.0 * rng.standard_normal((groups.max() + 1, 5))[groups[groups >= 0]]
    return X / np.linalg.norm(X, axis=1, keepdims=True), groups


def test_pair_scores_against_loops():
    X, g = _data()
    s, same = pair_scores(X, g)
    assert s.shape == same.shape == (len(X) * (len(X) - 1) // 2,)  # every pair, unrelated-unrelated ones included
    k = 0
    for i in range(len(X)):
        for j in range(i + 1, len(X)):
            assert s[k] == pytest.approx(float(X[i] @ X[j]))
            assert same[k] == (g[i] == g[j] and g[i] != -1)  # two unrelated images are not a pair
            k += 1
    assert k == len(s)


def _unrelated_lookalikes():
    """a0, a1 one origin (cos 10°); u0, u1 of no origin and more alike (cos 5°); u2 far from all."""
    deg = np.radians
    X = np.array([[1, 0], [np.cos(deg(10)), np.sin(deg(10))], [0, 1], [np.sin(deg(5)), np.cos(deg(5))], [-1, 0]])
    return X, np.array([0, 0, -1, -1, -1])


def test_precision_counts_pairs_of_two_unrelated():
    X, g = _unrelated_lookalikes()
    s, same = pair_scores(X, g)
    assert len(s) == 10 and same.sum() == 1
    (row,) = threshold_table(s, same, [0.98])  # keeps (a0, a1) and (u0, u1)
    assert (row["same_kept"], row["unrelated_kept"]) == (1, 1)
    assert row["precision"] == pytest.approx(0.5) and row["recall"] == 1.0
    # the most similar pair is two unrelated images: no threshold reaches precision 0.95
    assert threshold_at_precision(s, same, 0.95) == dict(threshold=None, precision=0.5, recall=0.0)
    from retrieval.neardup import recall_levels_table

    (row,) = recall_levels_table(X, g, quantiles=(0.5,))
    assert row["threshold"] == pytest.approx(np.cos(np.radians(10)))
    assert (row["same_kept"], row["unrelated_kept"], row["unrelated_unrelated_kept"]) == (1, 1, 1)
    assert row["precision"] == pytest.approx(0.5)


def test_threshold_table_against_loops():
    X, g = _data(1)
    s, same = pair_scores(X, g)
    thresholds = [-1.0, 0.0, 0.3, float(np.median(s)), 0.9, 1.1]
    for row, t in zip(threshold_table(s, same, thresholds), thresholds):
        tp = sum(1 for v, y in zip(s, same) if v >= t and y)
        fp = sum(1 for v, y in zip(s, same) if v >= t and not y)
        assert (row["same_kept"], row["unrelated_kept"]) == (tp, fp)
        assert row["recall"] == pytest.approx(tp / same.sum())
        assert row["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)


def test_pr_curve_with_ties_against_loops():
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.5, 0.5, 0.1])
    same = np.array([1, 1, 0, 1, 0, 1, 0, 0], bool)
    p, r, t = pr_curve(scores, same)
    np.testing.assert_array_equal(t, [0.9, 0.8, 0.7, 0.5, 0.1])  # one point per distinct score
    for pi, ri, ti in zip(p, r, t):
        kept = scores >= ti
        assert pi == pytest.approx((same & kept).sum() / kept.sum())
        assert ri == pytest.approx((same & kept).sum() / same.sum())


def test_threshold_at_precision():
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.5, 0.5, 0.1])
    same = np.array([1, 1, 0, 1, 0, 1, 0, 0], bool)
    # precisions at 0.9, 0.8, 0.7, 0.5, 0.1: 1, 2/3, 3/4, 4/7, 4/8
    assert threshold_at_precision(scores, same, 1.0) == dict(threshold=0.9, precision=1.0, recall=0.25)
    got = threshold_at_precision(scores, same, 0.7)
    assert got["threshold"] == 0.7 and got["recall"] == pytest.approx(0.75)  # lowest threshold reaching 0.7
    assert threshold_at_precision(scores, np.ones(8, bool), 1.0)["threshold"] == 0.1  # all same origin
    with pytest.raises(ValueError, match="precision"):
        threshold_at_precision(scores, same, 0.0)


def test_bad_input():
    X, g = _data()
    with pytest.raises(ValueError, match="groups"):
        pair_scores(X, g[:-1])
    with pytest.raises(ValueError, match="NaN"):
        pair_scores(np.full((3, 2), np.nan), np.zeros(3))
    with pytest.raises(ValueError, match="no same-origin pair"):
        pr_curve([0.1, 0.2], [False, False])
    with pytest.raises(ValueError, match="same length"):
        threshold_table([0.1, 0.2], [True], [0.5])


def test_recall_levels_table_against_loops():
    from retrieval.neardup import format_threshold_table, recall_levels_table

    rng = np.random.default_rng(3)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, -1, -1, -1, -1])
    X = rng.standard_normal((len(groups), 8)).astype(np.float32)
    X[groups >= 0] += 1.5 * rng.standard_normal((3, 8)).astype(np.float32)[groups[groups >= 0]]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rows = recall_levels_table(X, groups, quantiles=(0.3, 0.6))  # between scores: no tie with the threshold
    X64 = X.astype(np.float64)
    pairs = [(float(X64[i] @ X64[j]), groups[i] == groups[j] >= 0, groups[i] < 0 and groups[j] < 0)
             for i in range(len(X)) for j in range(i + 1, len(X))]
    same = [v for v, y, _ in pairs if y]
    for q, row in zip((0.3, 0.6), rows):
        t = np.quantile(np.array(same, np.float64), q)
        assert row["threshold"] == pytest.approx(t, abs=1e-6)
        tp = sum(v >= row["threshold"] for v, y, _ in pairs if y)
        fp = sum(v >= row["threshold"] for v, y, _ in pairs if not y)  # every other pair, two unrelated included
        uu = sum(v >= row["threshold"] for v, _, both in pairs if both)
        assert (row["same_kept"], row["unrelated_kept"], row["unrelated_unrelated_kept"]) == (tp, fp, uu)
        assert row["precision"] == pytest.approx(tp / (tp + fp))
    text = format_threshold_table(rows).splitlines()
    assert len(text) == 3 and "unrelated-unrelated" in text[0] and f"{rows[1]['threshold']:7.4f}" in text[2]
