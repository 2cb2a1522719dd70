"""An ipywidgets browser of the ranked lists recorded in a run folder.

``browse("runs/demo")`` in a JupyterLab cell shows two methods' top-k lists for one query side by
side, framed green / red / grey (positive / negative / junk under the chosen protocol), with rank,
similarity and the AP of each list; a click on a result's caption shows it larger with its rank in
both lists. It reads what :func:`retrieval.run.store.record_ranks` wrote (``<run_dir>/ranks/``), so it
opens any run folder, including those executed by papermill.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import data_dir
from .datasets import load_revisited
from .metrics import ALL_PROTOCOLS
from .run.store import list_ranks, load_ranks
from .viz import RESULT_COLOURS, result_labels, short_names, thumbnail


def framed_png(path: str | os.PathLike, colour: str, size: int = 160, border: int = 5, bbx=None) -> bytes:
    """PNG bytes of the image's thumbnail (longer side ``size`` px) inside a ``border``-px frame of
    ``colour``; ``bbx`` = [x1, y1, x2, y2] in original pixels is outlined in the query colour."""

    img = Image.fromarray(np.asarray(thumbnail(str(path), size)))
    if bbx is not None:
        with Image.open(path) as im:
            s = img.size[0] / im.size[0]
        ImageDraw.Draw(img).rectangle([float(v) * s for v in bbx], outline=RESULT_COLOURS["query"], width=2)
    out = Image.new("RGB", (img.size[0] + 2 * border, img.size[1] + 2 * border), colour)
    out.paste(img, (border, border))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def pick_methods(methods: list[str], a: str | None = None, b: str | None = None, score=None) -> tuple[str, str]:
    """Methods A and B among ``methods`` (recorded names). ``a`` None: the shortest name (the first
    stage, whose name the re-rankers extend); ``b`` starting with ``+`` is appended to ``a``
    (``"+csa"``); ``b`` None: the other method with the highest ``score(method)`` (e.g. mean AP),
    else the next one."""
    if not methods:
        raise ValueError("no methods recorded")
    a = a or min(methods, key=len)
    if b is not None and b.startswith("+"):
        b = a + b
    for name, v in (("method_a", a), ("method_b", b)):
        if v is not None and v not in methods:
            raise ValueError(f"{name}={v!r} is not recorded; recorded methods: {methods}")
    if b is None:
        others = [m for m in methods if m != a] or [a]
        b = max(others, key=score) if score is not None else others[0]
    return a, b


class ResultBrowser:
    """The widget app; ``.widget`` is the root (shown by :func:`browse`). Controls: ``dataset``,
    ``protocol``, ``method_a``, ``method_b``, ``query`` (Dropdown labelled with both APs), ``k``
    (IntSlider); ``lists`` holds the two rows of result tiles, ``detail`` the enlarged result.

    ``protocol``: one the dataset's lists were scored under (E/M/H, or ``classic`` for the original
    Oxford5k/Paris6k); None: ``medium`` where recorded, else the dataset's only protocol."""

    def __init__(self, run_dir: str | os.PathLike, dataset: str | None = None, method_a: str | None = None,
                 method_b: str | None = None, protocol: str | None = None, k: int = 10, thumb: int = 128,
                 data_root: str | os.PathLike | None = None):
        import ipywidgets as w  # lazy: JupyterLab only

        self.run_dir, self.thumb, self._data_root = Path(run_dir), int(thumb), data_root
        self.available = list_ranks(run_dir)
        if not self.available:
            raise FileNotFoundError(f"{self.run_dir}/ranks: no ranked lists recorded (run 03_rerank, or "
                                    "retrieval.run.store.record_ranks, into this run folder first)")
        if protocol is not None and protocol not in ALL_PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}: expected one of {ALL_PROTOCOLS}")
        dataset = dataset or next(iter(self.available))
        if dataset not in self.available:
            raise ValueError(f"dataset={dataset!r}: no ranked lists in {self.run_dir}; recorded: {sorted(self.available)}")
        self._datasets, self._runs = {}, {}
        protocols = self.protocols(dataset)
        if protocol is not None and protocol not in protocols:
            raise ValueError(f"protocol={protocol!r}: the lists of {dataset!r} are scored under {protocols}")
        lay = w.Layout(width="auto")
        self.dataset = w.Dropdown(options=sorted(self.available), value=dataset, description="dataset", layout=lay)
        self.protocol = w.Dropdown(options=list(protocols), value=protocol or self._default_protocol(protocols),
                                   description="protocol", layout=lay)
        self.method_a = w.Dropdown(description="method A", layout=w.Layout(width="46%"))
        self.method_b = w.Dropdown(description="method B", layout=w.Layout(width="46%"))
        self.query = w.Dropdown(description="query", layout=w.Layout(width="60%"))
        self.k = w.IntSlider(value=k, min=1, max=10, description="top-k", continuous_update=False)
        self.query_image = w.Image(format="png")
        self.query_label = w.HTML()
        self.lists = w.VBox()
        self.detail = w.VBox()
        self._set_methods(method_a, method_b)
        for c in (self.method_a, self.method_b, self.protocol):
            c.observe(self._on_lists_change, names="value")
        self.dataset.observe(self._on_dataset, names="value")
        self.query.observe(lambda _: self.render(), names="value")
        self.k.observe(lambda _: self.render(), names="value")
        self.widget = w.VBox([
            w.HBox([self.dataset, self.protocol]),
            w.HBox([self.method_a, self.method_b]),
            w.HBox([self.query, self.k]),
            w.HBox([w.VBox([self.query_image, self.query_label]), self.lists]),
            self.detail,
        ])
        self.widget.add_class("retrieval-browser")  # CSS hooks for the browser test
        self.detail.add_class("retrieval-detail")
        self._update_queries()

    # ------------------------------------------------------------------ data
    def test_dataset(self, name: str):
        """The :class:`~retrieval.datasets.RevisitedDataset` of ``name`` (images and gnd), cached."""

        if name not in self._datasets:
            root = self._data_root or self.run(name, self.available[name][0])["data_root"] or data_dir()
            self._datasets[name] = load_revisited(root, name)
        return self._datasets[name]

    def run(self, dataset: str, method: str) -> dict:
        """:func:`~retrieval.run.store.load_ranks` of (dataset, method), cached."""
        if (dataset, method) not in self._runs:
            self._runs[dataset, method] = load_ranks(self.run_dir, dataset, method)
        return self._runs[dataset, method]

    def protocols(self, dataset: str) -> tuple[str, ...]:
        """The protocols ``dataset``'s lists were scored under (E/M/H or ``classic``)."""
        return tuple(self.run(dataset, self.available[dataset][0])["ap"])

    @staticmethod
    def _default_protocol(protocols) -> str:
        return "medium" if "medium" in protocols else protocols[0]

    def _set_methods(self, a: str | None, b: str | None) -> None:
        ds = self.dataset.value
        methods = self.available[ds]
        a, b = pick_methods(methods, a, b, lambda m: np.nanmean(self.run(ds, m)["ap"][self.protocol.value]))
        self._hold = True
        self.method_a.options, self.method_b.options = methods, methods
        self.method_a.value, self.method_b.value = a, b
        self._hold = False

    def _on_dataset(self, _=None) -> None:
        protocols = self.protocols(self.dataset.value)
        if tuple(self.protocol.options) != protocols:  # e.g. roxford5k (E/M/H) -> oxford5k (classic)
            keep = self.protocol.value if self.protocol.value in protocols else self._default_protocol(protocols)
            self._hold = True
            self.protocol.options, self.protocol.value = list(protocols), keep
            self._hold = False
        self._set_methods(None, None)
        self._update_queries()

    def _on_lists_change(self, _=None) -> None:
        if not self._hold:
            self._update_queries()

    def _update_queries(self) -> None:
        """Query options labelled with both APs (``q 12 · A 34.5 · B 56.7``); keeps the query."""
        a, b = self.current()
        p = self.protocol.value
        fmt = lambda v: "–" if np.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
        options = [(f"q {q} · A {fmt(a['ap'][p][q])} · B {fmt(b['ap'][p][q])}", q)
                   for q in range(a["ranks"].shape[1])]
        keep = self.query.value if self.query.value is not None and self.query.value < len(options) else 0
        self._hold = True
        self.query.options = options
        self.query.value = keep
        self._hold = False
        self.k.max = min(a["ranks"].shape[0], b["ranks"].shape[0], 50)
        self.render()

    def current(self) -> tuple[dict, dict]:
        ds = self.dataset.value
        a, b = self.run(ds, self.method_a.value), self.run(ds, self.method_b.value)
        if a["ranks"].shape[1] != b["ranks"].shape[1]:
            raise ValueError(f"{self.method_a.value} and {self.method_b.value} rank different query sets "
                             f"({a['ranks'].shape[1]} vs {b['ranks'].shape[1]} queries)")
        return a, b

    # ------------------------------------------------------------------ drawing
    def render(self) -> None:
        """Redraw the query and both lists for the current control values."""
        import ipywidgets as w  # lazy: JupyterLab only

        if getattr(self, "_hold", False) or self.query.value is None:
            return
        ds = self.test_dataset(self.dataset.value)
        a, b = self.current()
        q, p, k = int(self.query.value), self.protocol.value, int(self.k.value)
        self.query_image.value = framed_png(ds.query_paths()[q], RESULT_COLOURS["query"], self.thumb,
                                            bbx=ds.gnd[q].get("bbx"))
        self.query_label.value = f"<b>query {q}</b><br>{ds.qimlist[q]}"
        names = short_names(a["method"], b["method"])
        rows = []
        for run, name in zip((a, b), names):
            ap = run["ap"][p][q]
            head = w.HTML(f"<b>{name}</b> ({run['method']}) · AP {p} "
                          f"{'–' if np.isnan(ap) else f'{100 * ap:.2f}'}")
            rows.append(w.VBox([head, w.HBox(self._tiles(ds, run, q, k, p))]))
        self.lists.children = rows
        self.detail.children = []

    def _tiles(self, ds, run: dict, q: int, k: int, protocol: str) -> list:
        import ipywidgets as w  # lazy: JupyterLab only

        ids = run["ranks"][:k, q]
        tiles = []
        for r, (i, label) in enumerate(zip(ids, result_labels(ds.gnd[q], ids, protocol))):
            s = run["scores"][r, q]
            width = f"{self.thumb // 2 + 40}px"
            img = w.Image(value=framed_png(ds.db_paths()[i], RESULT_COLOURS[label], self.thumb // 2 + 30),
                          format="png", layout=w.Layout(width=width))
            btn = w.Button(description=f"{r + 1}. #{i}" + ("" if np.isnan(s) else f" {s:.3f}"),
                           tooltip=f"{label}: show db image {i} larger", style={"font_size": "11px"},
                           layout=w.Layout(width=width, padding="0px"))
            btn.on_click(lambda _b, i=int(i), label=label: self.show(i, label))
            tiles.append(w.VBox([img, btn]))
            tiles[-1].add_class("retrieval-tile")
        return tiles

    def rank_in(self, run: dict, q: int, i: int) -> int | None:
        """1-based rank of db image ``i`` in ``run``'s list of query ``q`` (None beyond the stored top)."""
        hit = np.flatnonzero(run["ranks"][:, q] == i)
        return int(hit[0]) + 1 if hit.size else None

    def show(self, i: int, label: str | None = None) -> None:
        """Show db image ``i`` larger with its rank in both lists (a click on a result's caption)."""
        import ipywidgets as w  # lazy: JupyterLab only

        ds = self.test_dataset(self.dataset.value)
        a, b = self.current()
        q = int(self.query.value)
        label = label or result_labels(ds.gnd[q], [i], self.protocol.value)[0]
        ranks = []
        for run, name in zip((a, b), short_names(a["method"], b["method"])):
            r = self.rank_in(run, q, i)
            ranks.append(f"{name}: rank {r}" if r else f"{name}: not in the top {run['ranks'].shape[0]}")
        text = w.HTML(f"<b>db {i}</b> ({ds.imlist[i]}) · {label} for query {q} · " + " · ".join(ranks))
        png = framed_png(ds.db_paths()[i], RESULT_COLOURS[label], 2 * self.thumb + 64, border=6)

        width = Image.open(io.BytesIO(png)).size[0]
        big = w.Image(value=png, format="png", layout=w.Layout(width=f"{width}px"))  # not stretched
        self.detail.children = [text, big]


def browse(run_dir: str | os.PathLike = "runs/demo", **kwargs):
    """Open the result browser on ``run_dir`` (see :class:`ResultBrowser` for the options); returns
    the :class:`ResultBrowser`, whose ``.widget`` a notebook cell displays."""
    from IPython.display import display  # lazy: JupyterLab only

    app = ResultBrowser(run_dir, **kwargs)
    display(app.widget)
    return app
