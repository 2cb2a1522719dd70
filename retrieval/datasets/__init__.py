"""Datasets: the embedded synthetic benchmark, the real Oxford/Paris test sets (revisited and
original), your own imported photos (:mod:`.importer`) and the SfM-120k training format."""

from __future__ import annotations

import os
from pathlib import Path

from .images import crop_bbx, load_image, resize_longer
from .revisited import CLASSIC_TEST, REAL_TEST, REVISITED_TEST, RevisitedDataset, load_revisited, validate_gnd
from .synthetic import PRESETS, dataset_name, generate, val_name
from .tuples import TupleMiner, TuplesDataset, cid2filename, load_sfm
from ..config import data_dir
from .distractors import (DistractedDataset, add_distractors, check_spec, distractor_set_name, parse_spec, r1m_paths,
                          render_distractors, synth_distractor_paths, synth_spec)
from .importer import import_collection, imported_names


def is_synthetic(dataset: str) -> bool:
    """``synth``, ``synth-val`` or a synthetic set's full name (``synth-...``)."""
    return dataset == "synth" or dataset.startswith("synth-")


def resolve_name(dataset: str = "synth", preset: str = "default", difficulty: float = 1.0,
                 seed: int = 0, root: str | os.PathLike | None = None) -> str:
    """Folder name of a test dataset: ``synth`` → ``synth-<preset>[...]``, ``synth-val`` → its validation
    benchmark ``synth-<preset>[...]-val``; real names, ``synth-...`` names and imported sets (a folder
    ``<root>/test/<name>/gnd_<name>.pkl``, :func:`~retrieval.datasets.importer.imported_names`; root default
    :func:`~retrieval.config.data_dir`) unchanged. ValueError listing what exists for any other name."""
    if dataset == "synth":
        return dataset_name(preset, difficulty, seed)
    if dataset == "synth-val":
        return val_name(dataset_name(preset, difficulty, seed))
    if not isinstance(dataset, str):
        raise ValueError(f"dataset must be a name (str), got {dataset!r}")
    if is_synthetic(dataset) or dataset in REAL_TEST:
        return dataset
    imported = imported_names(root)
    if dataset in imported:
        return dataset
    folder = (Path(root) if root is not None else data_dir()) / "test"
    raise ValueError(f"unknown dataset {dataset!r}; expected 'synth', 'synth-val', a synthetic set's name "
                     f"('synth-<preset>...'), a real one ({', '.join(REAL_TEST)}) or an imported one under {folder} "
                     f"({', '.join(imported) if imported else 'none yet'}: python -m retrieval.datasets import SRC "
                     "--name NAME)")


def get_test(dataset: str = "synth", preset: str = "default", root: str | os.PathLike | None = None,
             difficulty: float = 1.0, seed: int = 0, progress: bool = True,
             distractors: str | None = None) -> RevisitedDataset:
    """The test split of ``dataset``; the synthetic one is generated first if missing.

    ``distractors``: None; ``"r1m"`` / ``"r1m-N"`` to append the R1M distractors (all parts /
    parts 1..N, downloaded with ``python -m retrieval.datasets download revisitop1m``); or
    ``"synth-N"`` / ``"synth-Nk"`` for the first N rendered distractors of a synthetic test set
    (:func:`~retrieval.datasets.distractors.render_distractors`, done by ``00_data``). The dataset is
    then named ``<name>+<distractors>``. ``dataset="synth-val"``: the synthetic benchmark's
    validation set (``<name>-val``); an imported name (and its ``<name>-val``) is read as it is.
    """

    spec = parse_spec(distractors)
    root = Path(root) if root is not None else data_dir()
    name = resolve_name(dataset, preset, difficulty, seed, root)
    if dataset in REAL_TEST and not (root / "test" / name / f"gnd_{name}.pkl").is_file():
        raise FileNotFoundError(f"{name} is not downloaded under {root / 'test' / name}: run "
                                f"`python -m retrieval.datasets download {name}`")
    if dataset in ("synth", "synth-val"):
        generate(preset, root, difficulty=difficulty, seed=seed, progress=progress)
    return load_test(root, name if spec is None else f"{name}+{distractors}")


def load_test(root: str | os.PathLike, name: str) -> RevisitedDataset:
    """A test set by its full name, as runs record it: ``<test set>`` or ``<test set>+<distractors>``
    (``r1m[-N]``: R1M parts; ``synth-N[k]``: the synthetic test set's rendered distractors)."""
    base, _, spec = name.partition("+")
    ds = load_revisited(root, base)
    if not spec:
        return ds
    if parse_spec(spec)[0] == "r1m":
        return add_distractors(ds, r1m_paths(root, spec), spec, "revisitop1m")
    if not base.startswith("synth-"):
        raise ValueError(f"distractors={spec!r}: rendered distractors go with a synthetic test set, "
                         f"not {base} (use 'r1m' / 'r1m-N')")
    bench = base[:-len("-val")] if base.endswith("-val") else base
    return add_distractors(ds, synth_distractor_paths(root, bench, spec), spec, distractor_set_name(bench))


def train_name(dataset: str = "synth", preset: str = "default", difficulty: float = 1.0, seed: int = 0,
               root: str | os.PathLike | None = None) -> str:
    """The training split that goes with a test set: the synthetic benchmark's own for ``synth`` (same
    preset, difficulty and seed), ``retrieval-SfM-120k`` (downloaded) for the real test sets, an imported
    set's own (``<root>/train/<name>``; ``<name>-val`` shares it). FileNotFoundError when an imported set
    has none (it was imported without training landmarks)."""
    resolve_name(dataset, preset, difficulty, seed, root)  # checks the name
    if dataset in REAL_TEST:
        return "retrieval-SfM-120k"
    if is_synthetic(dataset):
        return dataset_name(preset, difficulty, seed)
    root = Path(root) if root is not None else data_dir()
    base = dataset[:-len("-val")] if dataset.endswith("-val") and dataset[:-len("-val")] in imported_names(root) \
        else dataset
    if not (root / "train" / base / f"{base}.pkl").is_file():
        raise FileNotFoundError(f"{dataset} has no training split ({root / 'train' / base / f'{base}.pkl'} is "
                                "missing): it was imported without training landmarks; import it again with "
                                "--train-landmarks F (or CSV rows with role=train) and --overwrite")
    return base


__all__ = ["CLASSIC_TEST", "DistractedDataset", "PRESETS", "REAL_TEST", "REVISITED_TEST", "RevisitedDataset",
           "add_distractors", "check_spec", "cid2filename", "crop_bbx", "dataset_name", "distractor_set_name",
           "parse_spec", "render_distractors", "synth_distractor_paths", "synth_spec", "val_name",
           "generate", "get_test", "import_collection", "imported_names", "is_synthetic", "load_image", "load_test",
           "load_revisited", "load_sfm", "resize_longer",
           "resolve_name", "train_name", "validate_gnd", "TupleMiner", "TuplesDataset"]
