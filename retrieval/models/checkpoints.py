"""Published network checkpoints (cnnimageretrieval-pytorch layout), ImageNet weights (torchvision's
and cirtorch's caffe-converted features).

A cirtorch checkpoint is a ``torch.save``d dict ``{"state_dict": ..., "meta": ...}``:

* ``state_dict`` keys ``features.<i>.…`` (the torchvision backbone cut before its global pooling),
  ``pool.p`` (GeM, shape (1,)), ``whiten.weight`` / ``whiten.bias`` (FC whitening, optional);
  other variants add ``lwhiten.*`` (local whitening) or ``pool.rpool.*`` / ``pool.whiten.*``
  (regional pooling), which :class:`~retrieval.models.GlobalNet` does not implement.
* ``meta``: ``architecture``, ``pooling``, ``local_whitening``, ``regional``, ``whitening``,
  ``mean``, ``std``, ``outputdim`` (the two ``retrievalSfM120k-*`` files may also carry ``Lw``,
  a post-processing whitening; it is not kept).

Nothing is downloaded here: files are expected in :func:`networks_dir` (published networks; the caffe
features under ``networks/imagenet/``) or the torch hub cache (torchvision weights). The hash in a
filename follows the torch hub convention (``name-<first hex digits of the file's sha256>.pth``).
torchvision checks its own prefixes on download; cirtorch loads its files without a hash check, so
for those the convention is assumed, not confirmed upstream — ``verify=False`` skips the check.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from ..catalog import (CAFFE_FEATURES, PUBLISHED, TORCHVISION_WEIGHTS,
                       caffe_features_path, published_path, torchvision_weights_path,
                       verify_file)
from .backbones import BACKBONES
from .global_net import GlobalNet, build_global_net
from .pooling import POOLINGS

# meta keys of a published checkpoint, in cirtorch's order
CIRTORCH_META_KEYS = ("architecture", "local_whitening", "pooling", "regional", "whitening",
                      "mean", "std", "outputdim")


# --------------------------------------------------------------------------- paths and hashes


def read_checkpoint(path: str | os.PathLike, trusted: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; a file holding other objects (e.g. numpy
    arrays) is unpickled in full only when ``trusted`` (its hash was verified), else ValueError."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not trusted:
                raise ValueError(f"{path}: holds objects other than tensors and plain containers; it is "
                                 "loaded in full (arbitrary unpickling) only once its hash is verified") from e
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # truncated, not a torch file
        raise ValueError(f"{path}: cannot read the checkpoint, truncated or not a torch file "
                         f"({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- loading
def strip_module_prefix(sd: Mapping) -> dict:
    """Keys saved from ``nn.DataParallel`` / DDP (``module.…``) → plain keys (a copy)."""
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def unwrap_state_dict(ckpt: Mapping) -> dict:
    """The state dict inside a checkpoint as the field's code writes them: the dict itself, or under
    ``state_dict`` / ``model`` / ``net``; a ``module.`` prefix dropped (:func:`strip_module_prefix`)."""
    for wrap in ("state_dict", "model", "net"):
        if wrap in ckpt and isinstance(ckpt[wrap], Mapping):
            ckpt = ckpt[wrap]
            break
    return strip_module_prefix(ckpt)


def _unsupported(meta: Mapping, sd: Mapping) -> list[str]:
    parts = []
    if meta.get("local_whitening") or any(k.startswith("lwhiten.") for k in sd):
        parts.append("local whitening (meta local_whitening / lwhiten.* weights)")
    if meta.get("regional") or any(k.startswith(("pool.rpool.", "pool.whiten.")) for k in sd):
        parts.append("regional pooling (meta regional / pool.rpool.* weights)")
    if meta["architecture"] not in BACKBONES:
        parts.append(f"architecture {meta['architecture']!r} (supported: {sorted(BACKBONES)})")
    if meta["pooling"] not in POOLINGS:
        parts.append(f"pooling {meta['pooling']!r} (supported: {sorted(POOLINGS)})")
    p = sd.get("pool.p")
    if meta["pooling"] == "gem" and p is not None and p.numel() != 1:
        parts.append(f"GeM with one p per channel (pool.p of shape {tuple(p.shape)})")
    return parts


def check_state_dict(sd: Mapping, expected: Mapping, what: str, why: str = ", as its meta says") -> None:
    """ValueError naming the missing, unexpected and wrongly shaped keys of ``sd`` against the
    ``expected`` state dict of ``what`` (a strict load's check, with a readable message)."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def show(items):
            return f"{len(items)} (e.g. {', '.join(items[:3])})" if items else "0"
        raise ValueError(f"checkpoint weights do not fit {what}{why}: missing {show(missing)}; "
                         f"unexpected {show(unexpected)}; wrong shape {show(shapes)}")


def load_checkpoint_dict(ckpt: Mapping, name: str | None = None) -> GlobalNet:
    """A :class:`GlobalNet` from a cirtorch-layout checkpoint dict, its weights loaded strictly.

    Explicit key mapping: a ``module.`` prefix is dropped, and BatchNorm ``num_batches_tracked``
    buffers absent from old (PyTorch < 0.4.1) files are set to 0. NotImplementedError for parts
    GlobalNet lacks (local whitening, regional pooling, other backbones/poolings); ValueError when
    the weights do not fit the network the meta describes. ``meta`` gets the checkpoint's mean,
    std and outputdim, ``trained`` (True unless the file says otherwise) and ``name`` (when given
    or stored).
    """
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise ValueError("not a cirtorch checkpoint: expected a dict with 'state_dict' and 'meta'")
    meta, sd = ckpt["meta"], strip_module_prefix(dict(ckpt["state_dict"]))
    absent = [k for k in ("architecture", "pooling", "mean", "std") if k not in meta]
    if absent:
        raise ValueError(f"checkpoint meta lacks {absent} (has {sorted(meta)})")
    parts = _unsupported(meta, sd)
    if parts:
        raise NotImplementedError(f"checkpoint uses parts GlobalNet does not implement: {'; '.join(parts)}")

    arch, pooling = meta["architecture"], meta["pooling"]
    dim = BACKBONES[arch][1]
    what = f"a {arch} + {pooling} network"
    whitening: bool | int = False
    if bool(meta.get("whitening", False)) != ("whiten.weight" in sd):
        raise ValueError(f"checkpoint meta whitening={meta.get('whitening')} but whiten.weight is "
                         f"{'present' if 'whiten.weight' in sd else 'absent'}")
    if "whiten.weight" in sd:
        out, inp = sd["whiten.weight"].shape
        if inp != dim:
            raise ValueError(f"checkpoint whiten.weight takes {inp}-D input but {arch} gives {dim}-D "
                             f"descriptors: the weights are not {what}, as its meta says")
        whitening = True if out == dim else int(out)
        what += " with whitening"
    p = float(sd["pool.p"].reshape(-1)[0]) if pooling == "gem" and "pool.p" in sd else 3.0

    net = build_global_net(arch, pooling, p=p, learn_p=True, whitening=whitening, weights=None,
                           relu_plus=meta.get("relu_plus"))
    expected = net.state_dict()
    for k in expected:  # old files: no BatchNorm batch counter
        if k.endswith(".num_batches_tracked") and k not in sd and k[:-19] + "running_mean" in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    check_state_dict(sd, expected, what)
    net.load_state_dict(sd, strict=True)

    outputdim = int(net.meta["outputdim"])
    if meta.get("outputdim") is not None and int(meta["outputdim"]) != outputdim:
        raise ValueError(f"checkpoint meta outputdim={meta['outputdim']} but its weights give {outputdim}")
    name = name if name is not None else meta.get("name")
    net.meta.update(mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]),
                    outputdim=outputdim, trained=bool(meta.get("trained", True)),
                    weights=name if name is not None else meta.get("weights"),
                    p=p if pooling == "gem" else None)
    if name is not None:
        net.meta["name"] = name
    return net.eval()


def load_published(name: str, path: str | os.PathLike | None = None, verify: bool = True) -> GlobalNet:
    """The published network ``name`` (see :data:`PUBLISHED`) from ``path`` (default
    :func:`published_path`), its file checked against the hash in its filename unless ``verify``
    is False. FileNotFoundError (with the URL) when the file is absent; ValueError when the file is
    a different network than the table says."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown published network {name!r}; known: {', '.join(sorted(PUBLISHED))}")
    entry = PUBLISHED[name]
    path = Path(path) if path is not None else published_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"published network {name!r} not found: download it from {entry.url} "
                                f"to {path}")
    if verify:
        verify_file(path, entry.sha256_prefix)
    net = load_checkpoint_dict(read_checkpoint(path, trusted=verify), name=name)
    got = (net.meta["backbone"], net.meta["pooling"], bool(net.meta["whitening"]), net.meta["outputdim"])
    want = (entry.backbone, entry.pooling, entry.whitening, entry.outputdim)
    if got != want:
        raise ValueError(f"{path}: holds a (backbone, pooling, whitening, outputdim)={got} network, "
                         f"but {name!r} is {want}")
    return net


# --------------------------------------------------------------------------- saving
def cirtorch_meta(net: GlobalNet) -> dict:
    """``net``'s meta in the published layout (cirtorch's keys, plus ``trained``, and ``weights`` /
    ``name`` when set): what :func:`~retrieval.models.registry.save_model` writes for a GlobalNet.
    cirtorch itself reads such a file back only when the whitening keeps the dimension (D → D)."""
    m = net.meta
    meta = dict(architecture=m["backbone"], local_whitening=False, pooling=m["pooling"], regional=False,
                whitening=net.whiten is not None, mean=[float(v) for v in m["mean"]],
                std=[float(v) for v in m["std"]], outputdim=int(m["outputdim"]),
                trained=bool(m.get("trained", False)))
    if m.get("weights") is not None:  # the pretrained start, for the name of a network not fine-tuned
        meta["weights"] = m["weights"]
    if m.get("name") is not None:
        meta["name"] = m["name"]
    if m.get("relu_plus") is not None:  # SuperGlobal's ReLU+ (the network is rebuilt with it)
        meta["relu_plus"] = float(m["relu_plus"])
    return meta


# --------------------------------------------------------------------------- torchvision weights


def load_torchvision_weights(backbone: str, path: str | os.PathLike | None = None,
                             verify: bool = True) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of ``backbone`` (the full classifier's keys) from
    ``path`` or the torch hub cache, hash-checked unless ``verify`` is False."""
    default = torchvision_weights_path(backbone)
    entry = TORCHVISION_WEIGHTS[backbone]
    path = Path(path) if path is not None else default
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights for {backbone!r} not found: download it from {entry.url} "
                                f"to {path}")
    if verify:
        verify_file(path, entry.sha256_prefix)
    sd = read_checkpoint(path, trusted=verify)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(sd)


# --------------------------------------------------------------------------- caffe features


def load_caffe_features(net: GlobalNet, path: str | os.PathLike | None = None, verify: bool = True) -> GlobalNet:
    """Load cirtorch's caffe-converted ImageNet features into ``net.features`` (in place; returns
    ``net``), as cirtorch's ``init_network`` does for vgg16 / resnet50/101/152.

    ``path``: default :func:`caffe_features_path` of ``net.meta['backbone']``; ``verify``: check
    the file's sha256 against the prefix of :data:`CAFFE_FEATURES` (a file for another backbone
    needs ``verify=False``). Keys must match ``net.features.state_dict()`` exactly (a ``module.``
    prefix is dropped; BatchNorm ``num_batches_tracked``, absent from old files, is set to 0):
    ValueError naming the missing, unexpected and wrongly shaped keys otherwise.
    """
    backbone = net.meta.get("backbone")
    entry = CAFFE_FEATURES.get(backbone)
    if path is None:
        path = caffe_features_path(backbone)
    path = Path(path)
    if not path.is_file():
        hint = f": download it from {entry.url}" if entry else ""
        raise FileNotFoundError(f"caffe ImageNet features for {backbone!r} not found at {path}{hint}")
    if verify:
        if entry is None:
            raise ValueError(f"no published caffe features for {backbone!r} to verify {path} against "
                             f"(known: {sorted(CAFFE_FEATURES)}); pass verify=False to load it unchecked")
        verify_file(path, entry.sha256_prefix)
    sd = read_checkpoint(path, trusted=verify)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors (expected cirtorch's `features` weights)")
    sd = strip_module_prefix(dict(sd))
    expected = net.features.state_dict()
    for k in expected:  # old (PyTorch < 0.4.1) files: no BatchNorm batch counter
        if k.endswith(".num_batches_tracked") and k not in sd and k[:-19] + "running_mean" in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    try:
        check_state_dict(sd, expected, f"the features of a {backbone} network", why=" (strict key check)")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    net.features.load_state_dict(sd, strict=True)
    net.meta.update(weights=path.stem, trained=True)
    return net
