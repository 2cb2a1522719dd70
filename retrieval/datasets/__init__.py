"""Datasets: the embedded synthetic benchmark, the real Oxford/Paris test sets (revisited and
original) and the SfM-120k training format."""

from __future__ import annotations

import os
from pathlib import Path

from .images import crop_bbx, load_image, resize_longer
from .revisited import RevisitedDataset, load_revisited, validate_gnd
from .synthetic import PRESETS, dataset_name, generate, val_name
from .tuples import TupleMiner, TuplesDataset, cid2filename, load_sfm
from ..config import data_dir
from .distractors import (DistractedDataset, add_distractors, check_spec, distractor_set_name, parse_spec, r1m_paths,
                          render_distractors, synth_distractor_paths)

#: revisited Oxford/Paris (Radenović et al., CVPR 2018): Easy/Medium/Hard protocols
REVISITED_TEST = ("roxford5k", "rparis6k")
#: original Oxford5k / Paris6k (Philbin et al., CVPR 2007 / 2008) with cirtorch's ground truth
#: (55 queries, ``ok``/``junk``; the query images are in the db): the ``classic`` protocol
CLASSIC_TEST = ("oxford5k", "paris6k")
REAL_TEST = REVISITED_TEST + CLASSIC_TEST


def resolve_name(dataset: str = "synth", preset: str = "default", difficulty: float = 1.0,
                 seed: int = 0) -> str:
    """Folder name of a test dataset: ``synth`` → ``synth-<preset>[...]``, ``synth-val`` → its validation
    benchmark ``synth-<preset>[...]-val``; real names unchanged."""
    if dataset == "synth":
        return dataset_name(preset, difficulty, seed)
    if dataset == "synth-val":
        return val_name(dataset_name(preset, difficulty, seed))
    if dataset.startswith("synth-") or dataset in REAL_TEST:
        return dataset
    raise ValueError(f"unknown dataset {dataset!r}; expected 'synth', 'synth-val' or one of {REAL_TEST}")


def get_test(dataset: str = "synth", preset: str = "default", root: str | os.PathLike | None = None,
             difficulty: float = 1.0, seed: int = 0, progress: bool = True,
             distractors: str | None = None) -> RevisitedDataset:
    """The test split of ``dataset``; the synthetic one is generated first if missing.

    ``distractors``: None; ``"r1m"`` / ``"r1m-N"`` to append the R1M distractors (all parts /
    parts 1..N, downloaded with ``python -m retrieval.datasets download revisitop1m``); or
    ``"synth-N"`` / ``"synth-Nk"`` for the first N rendered distractors of a synthetic test set
    (:func:`~retrieval.datasets.distractors.render_distractors`, done by ``00_data``). The dataset is
    then named ``<name>+<distractors>``. ``dataset="synth-val"``: the synthetic benchmark's
    validation set (``<name>-val``).
    """

    spec = parse_spec(distractors)
    root = Path(root) if root is not None else data_dir()
    name = resolve_name(dataset, preset, difficulty, seed)
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


def train_name(dataset: str = "synth", preset: str = "default", difficulty: float = 1.0, seed: int = 0) -> str:
    """The training split that goes with a test set: the synthetic benchmark's own for ``synth``
    (same preset, difficulty and seed), ``retrieval-SfM-120k`` (downloaded) for the real test sets."""
    resolve_name(dataset, preset, difficulty, seed)  # checks the name
    return "retrieval-SfM-120k" if dataset in REAL_TEST else dataset_name(preset, difficulty, seed)


__all__ = ["CLASSIC_TEST", "DistractedDataset", "PRESETS", "REAL_TEST", "REVISITED_TEST", "RevisitedDataset",
           "add_distractors", "check_spec", "cid2filename", "crop_bbx", "dataset_name", "distractor_set_name",
           "parse_spec", "render_distractors", "synth_distractor_paths", "val_name",
           "generate", "get_test", "load_image", "load_test", "load_revisited", "load_sfm", "resize_longer",
           "resolve_name", "train_name", "validate_gnd", "TupleMiner", "TuplesDataset"]
