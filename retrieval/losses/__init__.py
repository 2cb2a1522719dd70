"""Metric-learning losses for training global descriptors, and a registry of them by name.

Three kinds of loss are registered, with three signatures:

* ``kind == "tuple"``: ``loss(x, **kw)`` with ``x`` (B, T, D) in the *tuple layout*: B tuples of
  T = 2 + N L2-normalised descriptors each, ``x[:, 0]`` the query, ``x[:, 1]`` its positive and
  ``x[:, 2:]`` the N negatives (the tuples of :class:`retrieval.datasets.tuples.TupleMiner`).
* ``kind == "labels"``: ``loss(embeddings, labels, **kw)`` with ``embeddings`` (B, D) and integer
  ``labels`` (B,) (classification-margin losses such as ArcFace / CosFace).
* ``kind == "pair"``: ``loss(query, gallery, **kw)``: asymmetric retrieval, the query network's
  descriptors and the frozen gallery network's descriptors of the *same* images, (B, D) (or
  (B, T, D) tuples for AML).

A trainer reads ``get_loss(name).kind`` to know which one to call.

Reduction: a tuple's loss is the *sum* of its terms (one per positive / negative pair), as in
cirtorch; ``reduction="sum"`` (default, cirtorch's gradient scale) sums the B tuple losses,
``"mean"`` averages them, ``"none"`` returns the (B,) vector.

Modules: :mod:`~retrieval.losses.registry` (:data:`LOSSES`, :func:`register_loss`, :func:`get_loss`),
:mod:`~retrieval.losses.tuples` (contrastive, triplet), :mod:`~retrieval.losses.margin` (ArcFace,
CosFace), :mod:`~retrieval.losses.asym` (asymmetric retrieval: SSP, regression, HVS, LCE, AML) and
:mod:`~retrieval.losses.pairs` (in-batch lifted structure and pair losses). Importing this package
registers them all.
"""

from .asym import aml_loss, hvs_loss, lce_loss, regression_loss, ssp_loss, subspace_similarities
from .margin import arcface_logits, arcface_loss, cosface_logits, cosface_loss
from .pairs import in_batch_pair_loss, lifted_structure_loss
from .registry import KINDS, LOSSES, REDUCTIONS, get_loss, register_loss
from .tuples import contrastive_loss, triplet_loss

__all__ = ["KINDS", "LOSSES", "REDUCTIONS", "aml_loss", "arcface_logits", "arcface_loss", "contrastive_loss",
           "cosface_logits", "cosface_loss", "get_loss", "hvs_loss", "in_batch_pair_loss", "lce_loss",
           "lifted_structure_loss", "register_loss", "regression_loss", "ssp_loss", "subspace_similarities",
           "triplet_loss"]
