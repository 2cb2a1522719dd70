"""One owner of a run folder's layout: every artifact a notebook writes or reads is named here.

A run folder (``runs/demo`` by default, anywhere on disk) holds everything derived from its weights::

    <run>/benchmark.json                     the synthetic benchmark of the run (00_data writes it)
    <run>/metrics.json                       {dataset: {method: {easy/medium/hard | classic, recorded}}}
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

import json
import os
from pathlib import Path

from .catalog import PUBLISHED, published_path
from .config import data_dir, resolve, smoke
from .io import atomic_write_json

BENCHMARK_FILE = "benchmark.json"


class RunLayout:
    """Paths of one run's artifacts. ``run_dir``: the run folder (relative to the repository root, or
    absolute); ``notebook``: the notebook writing through it (recorded with its metrics);
    ``fig_dir``: where figures go (default ``<run_dir>/figures``)."""

    def __init__(self, run_dir: str | os.PathLike, notebook: str | None = None,
                 fig_dir: str | os.PathLike | None = None):
        self.root = resolve(run_dir).absolute()
        self.notebook = notebook
        self.fig_dir = resolve(fig_dir).absolute() if fig_dir else self.root / "figures"

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r}, notebook={self.notebook!r})"

    # ------------------------------------------------------------------ the benchmark of the run
    def record_benchmark(self, preset: str, difficulty: float = 1.0, data_seed: int = 0) -> Path:
        """Record the synthetic benchmark of this run (00_data); later notebooks default to it."""
        from .datasets import dataset_name

        return atomic_write_json(self.root / BENCHMARK_FILE, dict(
            preset=preset, difficulty=float(difficulty), data_seed=int(data_seed),
            name=dataset_name(preset, difficulty, data_seed)))

    def benchmark(self, preset: str | None = None, data_seed: int | None = None) -> dict:
        """The synthetic benchmark a notebook uses: ``preset`` / ``data_seed`` when given, else the
        run's (:meth:`record_benchmark`), else the profile's preset (``tiny`` in the smoke profile,
        ``default``) with seed 0. The difficulty is always the run's (1.0 without a record)."""
        path = self.root / BENCHMARK_FILE
        rec = json.loads(path.read_text()) if path.is_file() else {}
        out = dict(preset=preset if preset is not None else rec.get("preset", "tiny" if smoke() else "default"),
                   difficulty=float(rec.get("difficulty", 1.0)),
                   data_seed=int(data_seed if data_seed is not None else rec.get("data_seed", 0)))
        if rec and (out["preset"], out["data_seed"]) != (rec["preset"], rec["data_seed"]):
            print(f"note: {self.root.name} was made on {rec['name']}; this notebook uses preset={out['preset']!r}, "
                  f"data_seed={out['data_seed']} (difficulty {out['difficulty']:g})")
        return out

    def test_set(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None,
                 distractors: str | None = None):
        """The test set (:func:`~retrieval.datasets.get_test`); ``synth`` is the run's benchmark."""
        from .datasets import get_test

        b = self.benchmark(preset, data_seed)
        return get_test(dataset, b["preset"], difficulty=b["difficulty"], seed=b["data_seed"], distractors=distractors)

    def train_name(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None) -> str:
        """The training split that goes with ``dataset`` (the run's benchmark's for ``synth``)."""
        from .datasets import REAL_TEST, dataset_name

        if dataset in REAL_TEST:
            return "retrieval-SfM-120k"
        b = self.benchmark(preset, data_seed)
        return dataset_name(b["preset"], b["difficulty"], b["data_seed"])

    def train_splits(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None) -> dict:
        """``{"train": ..., "val": ...}`` of :meth:`train_name` (the synthetic one rendered if missing)."""
        from .datasets import REAL_TEST, generate, load_sfm

        if dataset not in REAL_TEST:
            b = self.benchmark(preset, data_seed)
            generate(b["preset"], difficulty=b["difficulty"], seed=b["data_seed"], progress=False)
        return load_sfm(data_dir(), self.train_name(dataset, preset, data_seed))

    # ------------------------------------------------------------------ networks and training folders
    def task_dir(self, task: str) -> Path:
        """``<run>/<task>``: a training task's folder (``checkpoint.pt``, history, exports)."""
        if not task or "/" in task or task.startswith("."):
            raise ValueError(f"task={task!r}: expected a plain folder name")
        return self.root / task

    def checkpoint(self, name: str) -> Path:
        """``<run>/train_global/<name>.pth``: a global network trained by 02 (or ``retrieval.train``)."""
        return self.task_dir("train_global") / f"{name}.pth"

    def network_file(self, network: str) -> Path:
        """The file of a notebook's ``network`` parameter: a published name (its download; ``<name>-ms``,
        01's name for multi-scale features, counts as ``<name>``), an existing checkpoint file, else the
        network this run trained under that name (:meth:`checkpoint`)."""
        if not isinstance(network, str) or not network:
            raise TypeError(f"network must be a published name, a checkpoint file or the name of a network "
                            f"trained by 02_train_global, got {network!r}")
        if network.endswith("-ms") and network[:-3] in PUBLISHED:
            network = network[:-3]
        if network in PUBLISHED:
            return published_path(network)
        if network.endswith((".pth", ".pt")) and resolve(network).is_file():
            return resolve(network)
        trained = self.checkpoint(network)
        if not trained.is_file():
            raise FileNotFoundError(f"network={network!r}: not a published network ({', '.join(sorted(PUBLISHED))}), "
                                    f"not a checkpoint file, and {trained} does not exist (run 02_train_global into "
                                    "this run folder first, or download a published one: python -m retrieval.datasets "
                                    "download NAME)")
        return trained

    def load_network(self, network: str):
        """:func:`~retrieval.models.load_model` of :meth:`network_file` (a published name by name, so
        its file is hash-checked), in eval mode."""
        from .models import load_model

        file = self.network_file(network)
        name = network[:-3] if network.endswith("-ms") and network[:-3] in PUBLISHED else network
        return load_model(name if name in PUBLISHED else file).eval()

    # ------------------------------------------------------------------ descriptors, whitening, anchors
    def features(self, dataset: str, name: str, image_size) -> Path:
        """``<run>/features/<dataset>/<name>-<size>.npz`` (sizes joined by ``+`` for several)."""
        return self.root / "features" / dataset / f"{name}-{_size_tag(image_size)}.npz"

    def train_features(self, split: str, name: str, image_size, part: str = "train", tag: str = "") -> Path:
        """``<run>/features/<split>/<name>-<size>-<part><tag>.npz``: descriptors of a training split."""
        return self.root / "features" / split / f"{name}-{_size_tag(image_size)}-{part}{tag}.npz"

    def whitening(self, network: str, shrinkage: float | str = "val") -> tuple[Path, float]:
        """The learned whitening 02 saved for ``network`` and its shrinkage α:
        ``<run>/train_global/whitening_lw<α>_<network>.npz``; ``"val"``: the α 02 chose on the val split."""
        folder = self.task_dir("train_global")
        if shrinkage == "val":
            choice = folder / f"whitening_{network}.json"
            if not choice.is_file():
                raise FileNotFoundError(f"{choice} not found: run 02_train_global for {network} "
                                        "(or pass a number as lw_shrinkage)")
            shrinkage = float(json.loads(choice.read_text())["shrinkage"])
        alpha = float(shrinkage)
        return folder / f"whitening_lw{alpha:g}_{network}.npz", alpha

    def record_whitening_choice(self, network: str, shrinkage: float, val_map: dict) -> Path:
        """Record the shrinkage 02 chose for ``network`` on the val split (``val_map``: α → val mAP)."""
        return atomic_write_json(self.task_dir("train_global") / f"whitening_{network}.json",
                                 {"shrinkage": float(shrinkage), "val_map": {f"{a:g}": float(m) for a, m in val_map.items()}})

    def anchors(self, split: str, name: str) -> Path:
        """``<run>/anchors/<split>/<name>.npz``: SSP anchors of the gallery network ``name``."""
        from .anchors import anchors_path

        return anchors_path(split, name, self.root)

    def graph(self, dataset: str, name: str, k: int) -> Path:
        """``<run>/graphs/<dataset>/<name>-k<k>.npz``: the db's k-NN graph of the descriptors ``name``
        (:func:`~retrieval.rerank.cached_neighbours`), shared by DBA, αDBA and diffusion."""
        return self.root / "graphs" / dataset / f"{name}-k{int(k)}.npz"

    # ------------------------------------------------------------------ results
    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    def ranks(self, dataset: str, method: str) -> Path:
        """``<run>/ranks/<dataset>/<method>.npz`` (``/`` in a method name becomes ``_``)."""
        if not method or not dataset:
            raise ValueError(f"dataset={dataset!r}, method={method!r}: both must be non-empty names")
        return self.root / "ranks" / dataset / f"{method.replace('/', '_')}.npz"

    def figure(self, name: str) -> Path:
        """``<fig_dir>/<name>`` (PNG)."""
        return self.fig_dir / name

    def record(self, dataset: str, method: str, results: dict, image_size=None, model=None,
               weights: str | None = None) -> str:
        """Add ``results`` (an evaluate() output) to the run's metrics.json with where they came from:
        this notebook, the image size and the weights' fingerprint (of ``model``, or ``weights``).
        Returns the key it was stored under (see :func:`retrieval.runs.record_metrics`)."""
        from .extract import model_fingerprint
        from .runs import record_metrics

        if model is not None and weights is None:
            weights = model_fingerprint(model)
        recorded = {k: v for k, v in (("notebook", self.notebook), ("image_size", image_size),
                                      ("weights", weights)) if v is not None}
        return record_metrics(self.root, dataset, method, results, recorded=recorded or None)

    # ------------------------------------------------------------------ the gallery network and its descriptors
    def gallery(self, network: str, dataset, image_size, device: str = "cpu", scales=(1.0,), **extract):
        """The network ``network`` (:meth:`load_network`) and its query/db descriptors of ``dataset``
        at ``image_size`` (and ``scales``: several give the multi-scale descriptors 01 names
        ``<network>-ms``), extracted once per run and weights (:func:`~retrieval.extract.extract_dataset`
        checks the stored parameters and fingerprint). Returns ``(net, query (n_q, D), db (n_db, D))``."""
        from .extract import extract_dataset

        net = self.load_network(network)
        name = network if len(scales) == 1 or network.endswith("-ms") else f"{network}-ms"
        query, db, _ = extract_dataset(net, dataset, self.features(dataset.name, name, image_size),
                                       image_size=image_size, scales=scales, device=device, **extract)
        return net, query, db

    def descriptors(self, model, name: str, dataset, image_size, device: str = "cpu", **extract):
        """Query/db descriptors of any ``model`` under ``name`` in this run (cached as :meth:`gallery`).
        Returns ``(query (n_q, D), db (n_db, D), params)``; ``params["weights_sha1"]`` is the weights'
        fingerprint."""
        from .extract import extract_dataset

        return extract_dataset(model, dataset, self.features(dataset.name, name, image_size),
                               image_size=image_size, device=device, **extract)

    def train_descriptors(self, model, name: str, split: str, paths, image_size, part: str = "train",
                          device: str = "cpu", tag: str = "", **extract):
        """Descriptors (N, D) of a training split's images ``paths`` by ``model``, cached under this run
        (:func:`~retrieval.extract.extract_cached`, which checks weights, sizes and paths). Returns
        ``(vecs, path)``: the file is what the training tasks take (``train_features=``)."""
        from .extract import extract_cached

        path = self.train_features(split, name, image_size, part, tag)
        return extract_cached(model, paths, path, image_size=image_size, device=device,
                              desc=f"{split} {part}, {name}", **extract), path


def _size_tag(image_size) -> str:
    if isinstance(image_size, (list, tuple)):
        return "+".join(str(int(s)) for s in image_size)
    return str(int(image_size))
