"""Training tasks: ``(model, data, loss_fn)`` builders for :func:`retrieval.train.fit`.

Each task takes one config dict (TrainConfig fields plus task options), so the same JSON runs in a
notebook or under torchrun::

    torchrun --standalone --nproc_per_node=2 -m retrieval.train --task global --config cfg.json

runs :func:`train_global` (``--task csa`` / ``asym`` / ``token`` / ``projection``: the other ``train_*``)
and exports the trained model with :func:`~retrieval.models.save_model`; a builder given as
``--task retrieval.tasks:global_tuples`` runs through :func:`~retrieval.train.fit` without the export.

One module per task family: :mod:`~retrieval.tasks.global_net` (global descriptors with mined
tuples), :mod:`~retrieval.tasks.csa` (CSA re-ranking), :mod:`~retrieval.tasks.asym` (asymmetric
query networks), :mod:`~retrieval.tasks.token` (Token as a landmark classifier),
:mod:`~retrieval.tasks.projection` (dimension reduction of fixed descriptors); what they share:
:mod:`~retrieval.tasks.base`. The names below are attributes of this package, so that
``retrieval.tasks:<name>`` works as a ``--task`` too.
"""

from .asym import (ASYM_DEFAULTS, ASYM_METHODS, asym_config, asym_distill, gallery_classifier, init_query_net,
                   train_asym, train_subset)
from .base import load_train_split, make_config, task_options
from .csa import CSA_DEFAULTS, csa_config, csa_lists, train_csa
from .global_net import GLOBAL_DEFAULTS, global_config, global_tuples, train_global
from .projection import PROJECTION_DEFAULTS, projection_config, projection_pairs, train_projection
from .token import TOKEN_DEFAULTS, token_classification, token_config, train_token

__all__ = ["ASYM_DEFAULTS", "ASYM_METHODS", "CSA_DEFAULTS", "GLOBAL_DEFAULTS", "PROJECTION_DEFAULTS",
           "TOKEN_DEFAULTS", "asym_config", "asym_distill", "csa_config", "csa_lists", "gallery_classifier",
           "global_config", "global_tuples", "init_query_net", "make_config", "projection_config",
           "projection_pairs", "task_options", "token_classification", "token_config", "train_asym",
           "train_csa", "train_global", "train_projection", "load_train_split", "train_subset", "train_token"]
