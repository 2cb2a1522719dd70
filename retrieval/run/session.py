"""The object a notebook works through: :class:`Run` — its run folder's paths (:attr:`Run.paths`, a
:class:`~retrieval.run.layout.RunLayout`), the benchmark it uses, the networks it loads, the descriptors
it extracts once per weights, and the rows it records into ``metrics.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..catalog import PUBLISHED
from ..config import data_dir, smoke
from ..datasets import (REAL_TEST, DistractedDataset, dataset_name, distractor_set_name, generate, get_test,
                        is_synthetic, load_sfm, synth_spec, train_name, val_name)
from ..extract import extract_prefix_cached, extract_test_set_cached, extract_vectors_cached, model_fingerprint
from ..io import atomic_write_json
from ..models import load_model
from .layout import RunLayout
from .store import record_metrics


class Run:
    """One notebook's session on a run folder. ``run_dir``: the run folder (relative to the repository
    root, or absolute); ``notebook``: the notebook working through it (recorded with its metrics);
    ``fig_dir``: where figures go (default ``<run_dir>/figures``)."""

    def __init__(self, run_dir: str | os.PathLike, notebook: str | None = None,
                 fig_dir: str | os.PathLike | None = None):
        self.paths = RunLayout(run_dir, fig_dir)
        self.notebook = notebook

    def __repr__(self) -> str:
        return f"Run({str(self.paths.root)!r}, notebook={self.notebook!r})"

    # ------------------------------------------------------------------ the benchmark of the run
    def record_benchmark(self, preset: str, difficulty: float = 1.0, data_seed: int = 0,
                         n_distractors: int = 0, stats: dict | None = None,
                         render_seconds: float | None = None) -> Path:
        """Record the synthetic benchmark of this run (00_data); later notebooks default to it. Names
        its test set, its validation benchmark (``val``: what settings are chosen on) and its rendered
        distractors (``distractors``: the set, how many are rendered and ``render_seconds``, the wall-clock
        time this run spent rendering them: 0 when they were already there), and each query's landmark
        per set (``query_landmarks``: what intervals resample); ``stats``: the sets' sizes
        (:func:`~retrieval.datasets.stats.benchmark_stats`)."""
        name = dataset_name(preset, difficulty, data_seed)
        distractors = dict(set=distractor_set_name(name), n=int(n_distractors))
        groups = {}  # each query's landmark, per set: the unit the bootstrap intervals resample
        for ds in (name, val_name(name)):
            file = data_dir() / "test" / ds / "landmarks.json"
            if file.is_file():
                groups[ds] = json.loads(file.read_text())["query"]
        if render_seconds is not None:
            distractors["render_seconds"] = round(float(render_seconds), 1)
        return atomic_write_json(self.paths.benchmark_file, dict(
            preset=preset, difficulty=float(difficulty), data_seed=int(data_seed), name=name, val=val_name(name),
            distractors=distractors, query_landmarks=groups, **({"stats": stats} if stats else {})))

    def benchmark(self, preset: str | None = None, data_seed: int | None = None) -> dict:
        """The synthetic benchmark a notebook uses: ``preset`` / ``data_seed`` when given, else the
        run's (:meth:`record_benchmark`), else the profile's preset (``tiny`` in the smoke profile,
        ``default``) with seed 0. The difficulty is always the run's (1.0 without a record)."""
        path = self.paths.benchmark_file
        rec = json.loads(path.read_text()) if path.is_file() else {}
        out = dict(preset=preset if preset is not None else rec.get("preset", "tiny" if smoke() else "default"),
                   difficulty=float(rec.get("difficulty", 1.0)),
                   data_seed=int(data_seed if data_seed is not None else rec.get("data_seed", 0)))
        if rec and (out["preset"], out["data_seed"]) != (rec["preset"], rec["data_seed"]):
            print(f"note: {self.paths.root.name} was made on {rec['name']}; this notebook uses "
                  f"preset={out['preset']!r}, data_seed={out['data_seed']} (difficulty {out['difficulty']:g})")
        return out

    def rendered_distractors(self) -> str | None:
        """The ``distractors`` value naming every distractor ``00_data`` rendered for the run's benchmark
        (``synth-5k`` for 5,000; :func:`~retrieval.datasets.distractors.synth_spec`), None when it rendered none
        or the run has no benchmark record."""
        path = self.paths.benchmark_file
        n = (json.loads(path.read_text()).get("distractors") or {}).get("n", 0) if path.is_file() else 0
        return synth_spec(n) if n else None

    def test_set(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None,
                 distractors: str | None = None):
        """The test set (:func:`~retrieval.datasets.get_test`); ``synth`` is the run's benchmark, a real or
        imported name is that set (``preset`` / ``data_seed`` then unused)."""
        b = self.benchmark(preset, data_seed) if is_synthetic(dataset) else dict(preset="default", difficulty=1.0,
                                                                                   data_seed=0)
        return get_test(dataset, b["preset"], difficulty=b["difficulty"], seed=b["data_seed"], distractors=distractors)

    def train_name(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None) -> str:
        """The training split that goes with ``dataset``: the run's benchmark's for ``synth``, SfM-120k for a
        real set, an imported set's own (:func:`~retrieval.datasets.train_name`: FileNotFoundError when it was
        imported without one)."""
        if dataset in REAL_TEST:
            return "retrieval-SfM-120k"
        if not is_synthetic(dataset):
            return train_name(dataset)
        b = self.benchmark(preset, data_seed)
        return dataset_name(b["preset"], b["difficulty"], b["data_seed"])

    def train_splits(self, dataset: str = "synth", preset: str | None = None, data_seed: int | None = None) -> dict:
        """``{"train": ..., "val": ...}`` of :meth:`train_name` (the synthetic one rendered if missing)."""
        if is_synthetic(dataset):
            b = self.benchmark(preset, data_seed)
            generate(b["preset"], difficulty=b["difficulty"], seed=b["data_seed"], progress=False)
        return load_sfm(data_dir(), self.train_name(dataset, preset, data_seed))

    # ------------------------------------------------------------------ networks
    def load_network(self, network: str):
        """:func:`~retrieval.models.load_model` of :meth:`RunLayout.network_file
        <retrieval.run.layout.RunLayout.network_file>` (a published name by name, so its file is
        hash-checked), in eval mode."""
        file = self.paths.network_file(network)
        name = network[:-3] if network.endswith("-ms") and network[:-3] in PUBLISHED else network
        return load_model(name if name in PUBLISHED else file).eval()

    # ------------------------------------------------------------------ descriptors, cached under the run
    def network_and_descriptors(self, network: str, dataset, image_size, device: str = "cpu", scales=(1.0,),
                                **extract):
        """The network ``network`` (:meth:`load_network`) and its query/db descriptors of ``dataset``
        at ``image_size`` (and ``scales``: several give the multi-scale descriptors 01 names
        ``<network>-ms``), extracted once per run and weights (:meth:`descriptors`). Returns
        ``(net, query (n_q, D), db (n_db, D))``."""
        net = self.load_network(network)
        name = network if len(scales) == 1 or network.endswith("-ms") else f"{network}-ms"
        query, db, _ = self.descriptors(net, name, dataset, image_size, device, scales=scales, **extract)
        return net, query, db

    def descriptors(self, model, name: str, dataset, image_size, device: str = "cpu", **extract):
        """Query/db descriptors of any ``model`` under ``name`` in this run, read from
        ``features/<dataset>/<name>-<size>.npz`` when its stored parameters and weights' fingerprint
        match, else extracted and saved (:func:`~retrieval.extract.extract_test_set_cached`). A test set
        with distractors (:class:`~retrieval.datasets.DistractedDataset`) is its plain test set's
        descriptors (the same file) followed by the distractors', cached once per network in shards under
        ``features/<distractor set>/<name>-<size>/`` (:func:`~retrieval.extract.extract_prefix_cached`: any
        N reuses a larger or smaller N). Returns ``(query (n_q, D), db (n_db, D), params)``;
        ``params["weights_sha1"]`` is the fingerprint."""
        if not isinstance(dataset, DistractedDataset):
            return extract_test_set_cached(model, dataset, self.paths.features(dataset.name, name, image_size),
                                           image_size=image_size, device=device, **extract)
        query, db, params = self.descriptors(model, name, dataset.base(), image_size, device, **extract)
        prefix = {k: v for k, v in extract.items() if k in ("scales", "batch_size", "upscale", "progress", "shard_size")}
        folder = self.paths.features(dataset.distractor_set, name, image_size).with_suffix("")
        distract = extract_prefix_cached(model, dataset.distractor_paths, folder, image_size=image_size, device=device,
                                         desc=f"{dataset.distractor_set}, {name}", **prefix)
        db = np.concatenate([db, distract.astype(db.dtype, copy=False)])
        return query, db, dict(params, dataset=dataset.name, n_db=dataset.n_db, distractors=dataset.distractor_set)

    def train_descriptors(self, model, name: str, split: str, paths, image_size, part: str = "train",
                          device: str = "cpu", tag: str = "", **extract):
        """Descriptors (N, D) of a training split's images ``paths`` by ``model``, cached under this run
        (:func:`~retrieval.extract.extract_vectors_cached`, which checks weights, sizes and paths). Returns
        ``(vecs, path)``: the file is what the training tasks take (``train_features=``)."""
        path = self.paths.train_features(split, name, image_size, part, tag)
        return extract_vectors_cached(model, paths, path, image_size=image_size, device=device,
                              desc=f"{split} {part}, {name}", **extract), path

    # ------------------------------------------------------------------ learned whitening
    def whitening(self, network: str, shrinkage: float | str = "val") -> tuple[Path, float]:
        """The learned whitening 02 saved for ``network`` and its shrinkage α; ``"val"``: the α 02 chose
        on the val split (:meth:`record_whitening_choice`)."""
        if shrinkage == "val":
            choice = self.paths.whitening_choice(network)
            if not choice.is_file():
                raise FileNotFoundError(f"{choice} not found: run 02_train_global for {network} "
                                        "(or pass a number as lw_shrinkage)")
            shrinkage = float(json.loads(choice.read_text())["shrinkage"])
        return self.paths.whitening(network, float(shrinkage)), float(shrinkage)

    def record_whitening_choice(self, network: str, shrinkage: float, val_map: dict) -> Path:
        """Record the shrinkage 02 chose for ``network`` on the val split (``val_map``: α → val mAP)."""
        return atomic_write_json(self.paths.whitening_choice(network),
                                 {"shrinkage": float(shrinkage), "val_map": {f"{a:g}": float(m) for a, m in val_map.items()}})

    # ------------------------------------------------------------------ results
    def record(self, dataset: str, method: str, results: dict, image_size=None, model=None,
               weights: str | None = None, aps: dict | None = None, reference: str | None = None, **measured) -> str:
        """Add ``results`` (an evaluate() output) to the run's metrics.json with where they came from:
        this notebook, the image size and the weights' fingerprint (of ``model``, or ``weights``), and
        any ``measured`` figures of the row (e.g. ``ms_per_query``); ``aps``: its per-query APs
        (:func:`~retrieval.metrics.per_query_ap`), for intervals; ``reference``: the row (method) this one is
        compared with (its difference and interval in the docs). Returns the key it was stored under
        (:func:`~retrieval.run.store.record_metrics`)."""
        if model is not None and weights is None:
            weights = model_fingerprint(model)
        recorded = {k: v for k, v in (("notebook", self.notebook), ("image_size", image_size),
                                      ("weights", weights), ("reference", reference), *measured.items())
                    if v is not None}
        aps = aps if aps is not None else results.get("ap")  # evaluate(..., per_query=True) carries them
        return record_metrics(self.paths.root, dataset, method, results, recorded=recorded or None, aps=aps)
