"""The registry of losses by name (:data:`LOSSES`, :func:`register_loss`, :func:`get_loss`) and the
reduction over tuples they share. The kinds and signatures: :mod:`retrieval.losses`."""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

REDUCTIONS = ("sum", "mean", "none")
KINDS = ("tuple", "labels", "pair")

LOSSES: dict[str, Callable] = {}


def register_loss(name: str, kind: str = "tuple"):
    """Decorator: register ``fn`` in :data:`LOSSES` under ``name`` and mark ``fn.kind = kind``.

    A name taken by another function raises ValueError (re-registering the same function, e.g. on
    a module reload, replaces it).

    ``kind="tuple"`` for losses ``fn(x (B, T, D), **kw)``; ``kind="labels"`` for
    ``fn(embeddings (B, D), labels (B,), **kw)``; ``kind="pair"`` for ``fn(query, gallery, **kw)``.
    """
    if kind not in KINDS:
        raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        old = LOSSES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a loss named {name!r} is already registered ({LOSSES[name].__name__})")
        fn.kind = kind
        fn.loss_name = name
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str, **kwargs) -> Callable:
    """The registered loss ``name`` with its hyper-parameters bound (e.g. ``margin=0.7``).

    Returns a callable ``(x) -> loss`` for tuple losses, ``(embeddings, labels) -> loss`` for
    label losses and ``(query, gallery) -> loss`` for pair losses; it carries ``.kind`` ("tuple" / "labels"), ``.name`` and ``.kwargs``.
    Unknown names or keyword arguments raise ValueError listing what is known.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    fn = LOSSES[name]
    params = inspect.signature(fn).parameters
    n_data = 1 if fn.kind == "tuple" else 2
    allowed = [p for p in list(params)[n_data:]
               if params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)]
    bad = sorted(set(kwargs) - set(allowed))
    if bad and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"loss {name!r} takes no argument(s) {bad}; its parameters are {allowed}")
    loss = functools.partial(fn, **kwargs)
    loss.kind, loss.name, loss.kwargs = fn.kind, name, dict(kwargs)  # partial objects take attributes
    return loss


def reduce_loss(per_tuple: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-tuple losses (B,) reduced by ``reduction`` (:data:`REDUCTIONS`): their sum, mean, or themselves."""
    if reduction == "sum":
        return per_tuple.sum()
    if reduction == "mean":
        return per_tuple.mean()
    if reduction == "none":
        return per_tuple
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
