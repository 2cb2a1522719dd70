"""One owner of a run folder's layout: every artifact a notebook writes or reads is named here, and
nothing else happens here (loading, extracting and recording: :class:`~retrieval.run.session.Run`).

A run folder (``runs/demo`` by default, anywhere on disk) holds everything derived from its weights::

    <run>/benchmark.json                     the synthetic benchmark of the run (00_data writes it)
    <run>/metrics.json                       {dataset: {method: {easy/medium/hard | classic, recorded}}}
    <run>/run.json                           machine, commit, date and command of a whole run
    <run>/train_global/<network>.pth         trained networks (+ whitening_*.npz / .json, checkpoint.pt)
    <run>/<task>/                            other training folders (asym, csa, train_token, dir_distill, …)
    <run>/features/<dataset>/<name>-<size>.npz           test descriptors (query + db)
    <run>/features/<train split>/<name>-<size>-<part>.npz  training-split descriptors (train / val)
    <run>/anchors/<train split>/<name>.npz   SSP anchors
    <run>/graphs/<dataset>/<name>-k<k>.npz   the db's k-NN graph (DBA, αDBA, diffusion at scale)
    <run>/ranks/<dataset>/<method>.npz       ranked lists for 08 and the browser
    <run>/figures/*.png                      figures (``fig_dir`` elsewhere, e.g. the README's figures/)

Two runs never read each other's artifacts: descriptors and anchors live under the run whose network
made them, and every cache also checks the weights' fingerprint before it is reused. What is shared is
only what does not depend on a run: the rendered benchmark and downloads under the data folder
(:func:`~retrieval.config.data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..anchors import anchors_path
from ..catalog import PUBLISHED, published_path
from ..config import resolve


class RunLayout:
    """Paths of one run's artifacts. ``run_dir``: the run folder (relative to the repository root, or
    absolute); ``fig_dir``: where figures go (default ``<run_dir>/figures``)."""

    def __init__(self, run_dir: str | os.PathLike, fig_dir: str | os.PathLike | None = None):
        self.root = resolve(run_dir).absolute()
        self.fig_dir = resolve(fig_dir).absolute() if fig_dir else self.root / "figures"

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    # ------------------------------------------------------------------ the run's records
    @property
    def benchmark_file(self) -> Path:
        """``<run>/benchmark.json``: the synthetic benchmark of the run (00_data records it)."""
        return self.root / "benchmark.json"

    @property
    def run_file(self) -> Path:
        """``<run>/run.json``: where the run's numbers come from (machine, commit, date, command)."""
        return self.root / "run.json"

    @property
    def metrics_file(self) -> Path:
        """``<run>/metrics.json``: every notebook's evaluation rows (:mod:`retrieval.run.store`)."""
        return self.root / "metrics.json"

    # ------------------------------------------------------------------ networks and training folders
    def task_dir(self, task: str) -> Path:
        """``<run>/<task>``: a training task's folder (``checkpoint.pt``, history, exports)."""
        if not task or "/" in task or task.startswith("."):
            raise ValueError(f"task={task!r}: expected a plain folder name")
        return self.root / task

    def trained_network(self, name: str) -> Path:
        """``<run>/train_global/<name>.pth``: the exported global network ``name`` trained by 02 (or
        ``python -m retrieval.train``); the training checkpoint beside it is ``checkpoint.pt``."""
        return self.task_dir("train_global") / f"{name}.pth"

    def network_file(self, network: str) -> Path:
        """The file of a notebook's ``network`` parameter: a published name (its download; ``<name>-ms``,
        01's name for multi-scale features, counts as ``<name>``), an existing checkpoint file, else the
        network this run trained under that name (:meth:`trained_network`)."""
        if not isinstance(network, str) or not network:
            raise TypeError(f"network must be a published name, a checkpoint file or the name of a network "
                            f"trained by 02_train_global, got {network!r}")
        if network.endswith("-ms") and network[:-3] in PUBLISHED:
            network = network[:-3]
        if network in PUBLISHED:
            return published_path(network)
        if network.endswith((".pth", ".pt")) and resolve(network).is_file():
            return resolve(network)
        trained = self.trained_network(network)
        if not trained.is_file():
            raise FileNotFoundError(f"network={network!r}: not a published network ({', '.join(sorted(PUBLISHED))}), "
                                    f"not a checkpoint file, and {trained} does not exist (run 02_train_global into "
                                    "this run folder first, or download a published one: python -m retrieval.datasets "
                                    "download NAME)")
        return trained

    # ------------------------------------------------------------------ descriptors, whitening, anchors
    def features(self, dataset: str, name: str, image_size) -> Path:
        """``<run>/features/<dataset>/<name>-<size>.npz`` (sizes joined by ``+`` for several)."""
        return self.root / "features" / dataset / f"{name}-{_size_tag(image_size)}.npz"

    def train_features(self, split: str, name: str, image_size, part: str = "train", tag: str = "") -> Path:
        """``<run>/features/<split>/<name>-<size>-<part><tag>.npz``: descriptors of a training split."""
        return self.root / "features" / split / f"{name}-{_size_tag(image_size)}-{part}{tag}.npz"

    def whitening(self, network: str, shrinkage: float) -> Path:
        """``<run>/train_global/whitening_lw<α>_<network>.npz``: the learned whitening of ``network`` at
        shrinkage α (02 saves one per α of its grid)."""
        return self.task_dir("train_global") / f"whitening_lw{float(shrinkage):g}_{network}.npz"

    def whitening_choice(self, network: str) -> Path:
        """``<run>/train_global/whitening_<network>.json``: the shrinkage 02 chose on the val split."""
        return self.task_dir("train_global") / f"whitening_{network}.json"

    def anchors(self, split: str, name: str) -> Path:
        """``<run>/anchors/<split>/<name>.npz``: SSP anchors of the gallery network ``name``."""
        return anchors_path(split, name, self.root)

    def graph(self, dataset: str, name: str, k: int) -> Path:
        """``<run>/graphs/<dataset>/<name>-k<k>.npz``: the db's k-NN graph of the descriptors ``name``
        (:func:`~retrieval.rerank.cached_neighbours`), shared by DBA, αDBA and diffusion."""
        return self.root / "graphs" / dataset / f"{name}-k{int(k)}.npz"

    # ------------------------------------------------------------------ results
    def ranks(self, dataset: str, method: str) -> Path:
        """``<run>/ranks/<dataset>/<method>.npz`` (``/`` in a method name becomes ``_``)."""
        if not method or not dataset:
            raise ValueError(f"dataset={dataset!r}, method={method!r}: both must be non-empty names")
        return self.root / "ranks" / dataset / f"{method.replace('/', '_')}.npz"

    def figure(self, name: str) -> Path:
        """``<fig_dir>/<name>`` (PNG)."""
        return self.fig_dir / name


def _size_tag(image_size) -> str:
    if isinstance(image_size, (list, tuple)):
        return "+".join(str(int(s)) for s in image_size)
    return str(int(image_size))
