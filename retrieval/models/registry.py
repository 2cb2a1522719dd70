"""One way to save and load every model of the lab: :func:`save_model` / :func:`load_model`.

Every file is a ``torch.save``d dict ``{"state_dict": ..., "meta": ...}`` and ``meta["kind"]`` says
which builder rebuilds it from ``meta`` alone (the timm / cirtorch idea: a checkpoint rebuilds its
own network):

=============  ====================================================  ==================================
kind           model                                                 meta
=============  ====================================================  ==================================
``global``     :class:`~retrieval.models.GlobalNet`                  cirtorch's keys (``architecture``,
                                                                     ``pooling``, ``whitening``, …)
``query``      :class:`~retrieval.models.QueryNet` (asymmetric)      ``query_net`` (build arguments)
``token``      :class:`~retrieval.models.token.Token`                backbone, dim, tokens, …
``csa``        :class:`~retrieval.models.csa.CSA`                    L, dim, depth, heads, …
``projection`` ``Sequential(Linear(D, d), L2N)`` (07's reduction)    in_dim, dim
=============  ====================================================  ==================================

:func:`load_model` also takes a published name (cirtorch's networks, downloaded to
``data/networks``), a published cirtorch file (no ``kind``: its ``architecture`` says global), the
training checkpoint of :func:`retrieval.train.fit` (``checkpoint.pt``: ``model`` + ``meta``), and
with ``kind=`` the authors' released Token and CSA weights, which carry no meta.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..catalog import PUBLISHED
from ..io import atomic_write_bytes, jsonable
from .checkpoints import (check_state_dict, cirtorch_meta, load_checkpoint_dict, load_published, read_checkpoint,
                          strip_module_prefix, unwrap_state_dict)
from .csa import CSA, build_csa, load_published_state_dict
from .global_net import GlobalNet
from .pooling import L2N
from .query_net import QueryNet, build_query_net
from .token import Token, build_token, load_token_state_dict

KINDS = ("global", "query", "token", "csa", "projection")


def model_kind(model: nn.Module) -> str | None:
    """The ``kind`` of a model of the lab (see the module docstring), None for anything else."""
    if isinstance(model, QueryNet):
        return "query"
    if isinstance(model, GlobalNet):
        return "global"
    if isinstance(model, Token):
        return "token"
    if isinstance(model, CSA):
        return "csa"
    if (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], nn.Linear)
            and isinstance(model[1], L2N)):
        return "projection"
    return None


def model_meta(model: nn.Module) -> dict | None:
    """What rebuilds ``model`` (JSON-able, with ``kind``), None when it is not a model of the lab."""
    kind = model_kind(model)
    if kind == "global":
        return dict(cirtorch_meta(model), kind=kind)
    if kind in ("query", "token"):
        return dict(jsonable(dict(model.meta)), kind=kind)
    if kind == "csa":
        blk = model.blocks[0] if len(model.blocks) else None
        return dict(kind=kind, L=model.L, dim=model.dim, depth=len(model.blocks),
                    heads=blk.attn.heads if blk else 1,
                    mlp_ratio=blk.mlp.fc1.out_features / model.dim if blk else 4.0,
                    qkv_bias=blk.attn.qkv.bias is not None if blk else True,
                    final_norm=isinstance(model.norm, nn.LayerNorm), name=getattr(model, "name", "csa"))
    if kind == "projection":
        return dict(kind=kind, in_dim=model[0].in_features, dim=model[0].out_features)
    return None


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` atomically as ``{"state_dict", "meta", **extra}`` (``meta`` from
    :func:`model_meta`); a GlobalNet in cirtorch's published layout. ``extra``: other top-level
    entries (e.g. ``epoch``). Returns the path."""
    meta = model_meta(model)
    if meta is None:
        raise TypeError(f"save_model: a {type(model).__name__} is not a model of the lab (kinds: {KINDS})")
    clash = {"state_dict", "meta"} & set(extra)
    if clash:
        raise ValueError(f"extra entries may not replace {sorted(clash)}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta, **extra}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _strict(model: nn.Module, sd: Mapping, what: str) -> nn.Module:
    check_state_dict(sd, model.state_dict(), what, why="")
    model.load_state_dict(sd, strict=True)
    return model


def _build(meta: Mapping, sd: dict, where: str) -> nn.Module:
    kind = meta.get("kind") or ("global" if "architecture" in meta else None)
    if kind == "global":
        return load_checkpoint_dict({"state_dict": sd, "meta": meta})
    if kind == "query":
        if "query_net" not in meta:
            raise ValueError(f"{where}: a query network's meta lacks 'query_net' (its build arguments)")
        net = _strict(build_query_net(**meta["query_net"]), sd, "the query network its meta describes")
        net.meta.update({k: (tuple(v) if k in ("mean", "std") else v) for k, v in meta.items() if k != "kind"})
        return net.eval()
    if kind == "token":
        cls_w = sd.get("classifier.weight")
        model = build_token(meta["backbone"], meta["dim"], meta["tokens"], meta["heads"], meta["encoder_layers"],
                            meta["decoder_layers"], meta["outputdim"],
                            classes=None if cls_w is None else cls_w.shape[0], name=meta.get("name"),
                            aggregator=meta.get("aggregator", "token"))
        load_token_state_dict(model, sd, classifier=cls_w is not None)
        model.meta.update({k: v for k, v in meta.items() if k != "kind"})
        model.meta["mean"], model.meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
        return model.eval()
    if kind == "csa":
        model = build_csa(meta["L"], meta["dim"], meta["depth"], meta["heads"], meta["mlp_ratio"], meta["qkv_bias"],
                          0.0, 0.0, 0.0, meta["final_norm"])
        return _strict(model, sd, "the CSA model its meta describes").eval()
    if kind == "projection":
        model = nn.Sequential(nn.Linear(meta["in_dim"], meta["dim"]), L2N())
        return _strict(model, sd, "the projection its meta describes").eval()
    raise ValueError(f"{where}: meta kind {kind!r} is not one of {KINDS}")


def _released(ckpt: Mapping, kind: str, path: Path, **kwargs) -> nn.Module:
    """The authors' released Token / CSA weights (no meta): the paper's architecture."""
    sd = unwrap_state_dict(ckpt)
    if kind == "token":
        backbone = kwargs.pop("backbone", "resnet101")
        model = build_token(backbone, name=kwargs.pop("name", f"token-{backbone}-released"), **kwargs)
        load_token_state_dict(model, sd)
        model.meta["trained"] = True
        return model.eval()
    if kind == "csa":
        w = sd.get("topk_proj.weight")
        if w is None:
            raise ValueError(f"{path}: no topk_proj.weight: not the authors' CSA (RerankTransformer) weights")
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        model = build_csa(L=w.shape[1], dim=w.shape[0], depth=depth, heads=kwargs.pop("heads", 12),
                          drop=0.0, attn_drop=0.0, drop_path=0.0, final_norm=False, **kwargs)
        load_published_state_dict(model, sd)
        return model.eval()
    raise ValueError(f"{path}: kind={kind!r}: only 'token' and 'csa' have released weights without meta")


def load_model(spec: str | os.PathLike, kind: str | None = None, verify: bool = True, **kwargs) -> nn.Module:
    """Any model of the lab, in eval mode: a published name (:data:`~retrieval.catalog.PUBLISHED`,
    hash-checked unless ``verify`` is False) or a file — one of :func:`save_model`, a published
    cirtorch checkpoint, :func:`~retrieval.train.fit`'s ``checkpoint.pt``, or with ``kind`` "token"
    / "csa" the authors' released weights (``kwargs``: their builder's options, e.g. ``backbone``).
    ``kind`` given for a file that has one must agree with it."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if str(spec) in PUBLISHED:
        if kind not in (None, "global"):
            raise ValueError(f"{spec!r} is a published global network, not kind={kind!r}")
        return load_published(str(spec), verify=verify)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model {str(spec)!r} is neither a published name ({', '.join(sorted(PUBLISHED))}) "
                                "nor an existing file")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: not a checkpoint dict (got {type(ckpt).__name__})")
    if "meta" in ckpt and isinstance(ckpt["meta"], Mapping) and ("state_dict" in ckpt or "model" in ckpt):
        meta = ckpt["meta"]
        found = meta.get("kind") or ("global" if "architecture" in meta else None)
        if kind is not None and found != kind:
            raise ValueError(f"{path}: holds a {found!r} model, not kind={kind!r}")
        sd = strip_module_prefix(ckpt["state_dict"] if "state_dict" in ckpt else ckpt["model"])
        try:
            return _build(meta, sd, str(path))
        except (ValueError, NotImplementedError, KeyError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from e
    if "model" in ckpt and "task" in ckpt:
        raise ValueError(f"{path}: a training checkpoint without the model's meta (written by an older version "
                         "of fit): rebuild the model with its task and load ckpt['model']")
    if kind is None:
        raise ValueError(f"{path}: no meta saying what model it holds; for the authors' released weights pass "
                         "kind='token' or kind='csa'")
    return _released(ckpt, kind, path, **kwargs)
