import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval import viz  # noqa: E402
from retrieval.datasets import get_test  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tiny_data):
    return get_test("synth", "tiny", root=tiny_data, progress=False)


def test_show_examples_labels_match_ground_truth(dataset):
    fig = viz.show_examples(dataset, query=[0, 1], per_label=2, seed=3)
    axes = np.array(fig.axes).reshape(2, -1)
    assert axes.shape == (2, 1 + 4 * 2)
    for row, q in enumerate([0, 1]):
        g = dataset.gnd[q]
        assert axes[row, 0].get_title() == f"query {q}"
        for ax in axes[row, 1:]:
            title = ax.get_title()
            if not title:
                continue  # fewer images of that label than asked for
            label, idx = title.split(" #")
            idx = int(idx)
            if label == "negative":
                assert idx not in set(g["easy"]) | set(g["hard"]) | set(g["junk"])
            else:
                assert idx in g[label]
            edge = ax.spines["top"].get_edgecolor()
            assert mcolors.to_hex(edge) == viz.LABEL_COLOURS[label]
    plt.close(fig)


def test_plot_per_query_ap_reports_nan_mean(tmp_path):
    aps = {"easy": np.array([1.0, 0.5, np.nan]), "medium": np.array([0.5, 0.25, 0.0]),
           "hard": np.array([np.nan, 0.1, 0.3])}
    fig = viz.plot_per_query_ap(aps, title="t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["easy (mAP 75.0)", "medium (mAP 25.0)", "hard (mAP 20.0)"]
    path = viz.save_figure(fig, tmp_path / "sub" / "ap.png")
    plt.close(fig)
    assert Image.open(path).format == "PNG"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ap.png"]  # no temp file left


def test_plot_map_bars_heights_match_results():
    res = {"a": {"easy": {"map": 0.5}, "medium": {"map": 0.25}, "hard": {"map": 0.1}},
           "b": {"easy": {"map": 0.7}, "medium": {"map": 0.3}, "hard": {"map": 0.2}}}
    fig = viz.plot_map_bars(res)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted([50.0, 25.0, 10.0, 70.0, 30.0, 20.0])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    plt.close(fig)


def test_plot_pr_curves_draws_the_curves_and_marks():
    from retrieval.neardup import pr_curve, threshold_at_precision

    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.1])
    same = np.array([1, 1, 0, 1, 0, 0], bool)
    p, r, _ = pr_curve(scores, same)
    mark = threshold_at_precision(scores, same, 0.7)
    fig = viz.plot_pr_curves({"m": (p, r)}, {"m": mark})
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), r)
    np.testing.assert_allclose(lines[0].get_ydata(), p)
    assert (lines[1].get_xdata()[0], lines[1].get_ydata()[0]) == (mark["recall"], mark["precision"])
    assert fig.axes[0].texts[0].get_text() == f"t={mark['threshold']:.3f}"
    plt.close(fig)
