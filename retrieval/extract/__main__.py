"""``[torchrun --nproc_per_node=N] python -m retrieval.extract ...``: a test set's descriptors into a run
folder, the db sharded over the ranks, resumable."""

from __future__ import annotations

import argparse

import torch

from ..config import resolve_device
from ..distributed import init_distributed, is_main
from ..models import build_global_net
from ..run import Run


def main(argv: list[str] | None = None) -> int:
    """``[torchrun --nproc_per_node=N] python -m retrieval.extract --run-dir R (--network NAME |
    --backbone B --pooling P --weights W) --dataset D [--distractors r1m] --image-size S``: a test
    set's descriptors into ``R/features/<dataset>/<name>-<size>.npz`` (:meth:`Run.descriptors <retrieval.run.session.Run.descriptors>`),
    the db sharded over the ranks, resumable; ``--dtype float16`` halves the db (R1M)."""
    ap = argparse.ArgumentParser(prog="python -m retrieval.extract", description=main.__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--network", help="a network of the run (train_global/<name>.pth) or a published one")
    for opt, default in (("--backbone", "efficientnet_lite0"), ("--pooling", "gem"), ("--weights", "imagenet"),
                         ("--dataset", "synth"), ("--distractors", None), ("--device", "auto"), ("--preset", None)):
        ap.add_argument(opt, default=default)
    ap.add_argument("--data-seed", type=int, default=None, help="synth: the benchmark (default: the run's)")
    ap.add_argument("--image-size", type=int, nargs="+", default=[1024])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=2048)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args(argv)
    device = resolve_device(args.device)                   # this rank's GPU (LOCAL_RANK) under torchrun
    init_distributed(device)
    run = Run(args.run_dir, "extract")
    net = run.load_network(args.network) if args.network else \
        build_global_net(args.backbone, args.pooling, weights=args.weights).eval()
    ds = run.test_set(args.dataset, args.preset, args.data_seed, args.distractors)
    size = args.image_size[0] if len(args.image_size) == 1 else args.image_size
    name = net.name + ("-ms" if len(args.scales) > 1 else "")
    query, db, _ = run.descriptors(net, name, ds, size, device, scales=args.scales, batch_size=args.batch_size,
                                   workers=args.workers, shard_size=args.shard_size, dtype=args.dtype)
    if is_main():
        print(f"{ds.name}: query {query.shape}, db {db.shape} {db.dtype} -> {run.paths.features(ds.name, name, size)}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
