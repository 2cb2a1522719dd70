"""``python -m retrieval.datasets generate --preset default [--distractors 10000]``: build the synthetic
benchmark (test, validation and training splits; and its rendered distractors);
``python -m retrieval.datasets download roxford5k``: fetch a real dataset or a published network
(``--list`` for every name); ``python -m retrieval.datasets verify token-r101``: check placed files;
``python -m retrieval.datasets import SRC --name NAME``: your own photos (a folder of landmark folders or a CSV)
as a test set, a validation benchmark and a training split (:mod:`retrieval.datasets.importer`)."""

import argparse
import sys

from . import generate, render_distractors
from .download import GROUPS, RESOURCES
from .download import DownloadError, download, verify
from .importer import format_summary, import_collection


def listing() -> str:
    """One line per resource: name, description, file count, notes."""
    lines = []
    for r in RESOURCES.values():
        alias = f" (alias {', '.join(r.aliases)})" if r.aliases else ""
        parts = f", parts {r.parts[0]}..{r.parts[-1]}" if r.parts else ""
        lines.append(f"{r.name}{alias}: {r.description}; {len(r.files)} file(s){parts}"
                     + (f"; {r.notes}" if r.notes else ""))
    lines.append("groups: " + "; ".join(f"{g} = {' '.join(v)}" for g, v in GROUPS.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retrieval.datasets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate the synthetic landmark benchmark under data/")
    g.add_argument("--preset", default="default", choices=["tiny", "default"])
    g.add_argument("--difficulty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--root", default=None, help="data folder (default: data/ or $RETRIEVAL_DATA_DIR)")
    g.add_argument("--workers", type=int, default=None)
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--distractors", type=int, default=0, metavar="N",
                   help="also render the first N distractor images (R1M's analogue; 03 takes distractors='synth-N')")
    d = sub.add_parser("download", help="download real datasets / published networks into data/ (see --list)")
    d.add_argument("names", nargs="*", help="e.g. roxford5k rparis6k revisitop1m retrieval-SfM-120k "
                   "gldv2-clean gl18-tl-resnet101-gem-w imagenet-resnet101, or a group: test, networks, imagenet")
    d.add_argument("--list", action="store_true", help="list every downloadable name and exit")
    d.add_argument("--parts", default=None, help="subset of shards for revisitop1m (1-100) / gldv2-clean (0-499), "
                   "e.g. 1-10 or 1,3,5-7")
    d.add_argument("--root", default=None, help="data folder (default: data/ or $RETRIEVAL_DATA_DIR)")
    d.add_argument("--mirror", default=None, help="base URL of a mirror serving <host>/<path> of the official URLs")
    d.add_argument("--keep-archives", action="store_true", help="keep archives under data/downloads/ after unpacking")
    d.add_argument("--retries", type=int, default=3, help="resume attempts per file after an interrupted transfer")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a transfer is retried")
    v = sub.add_parser("verify", help="check downloaded or hand-placed files against their checksums")
    v.add_argument("names", nargs="+")
    v.add_argument("--root", default=None)
    i = sub.add_parser("import", help="import your own photos (SRC/<landmark>/<image> or a CSV) as a test set, a "
                       "validation benchmark and a training split (docs/own_photos.md)")
    i.add_argument("src", help="a folder with one sub-folder per landmark, or a CSV with the header "
                   "image,landmark[,role][,label][,x1,y1,x2,y2]")
    i.add_argument("--name", required=True, help="the test set's name (data/test/NAME; notebooks: -p dataset NAME)")
    i.add_argument("--queries-per-landmark", type=int, default=2, metavar="N",
                   help="queries drawn per landmark without role=query rows: min(N, images // 2) (default 2)")
    i.add_argument("--val-landmarks", type=float, default=0, metavar="F", help="landmarks with queries held out as "
                   "the validation benchmark NAME-val: a fraction in (0, 1) or a count (default 0: none)")
    i.add_argument("--train-landmarks", type=float, default=0, metavar="F", help="landmarks (without roles, >= 2 "
                   "images) that form the training split instead: a fraction in (0, 1) or a count (default 0)")
    i.add_argument("--pairs-per-landmark", type=int, default=100, metavar="N",
                   help="most matching pairs per training landmark (default 100)")
    i.add_argument("--seed", type=int, default=0, help="seed of every choice (queries, held-out landmarks, db order)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing import of that name")
    i.add_argument("--root", default=None, help="data folder (default: data/ or $RETRIEVAL_DATA_DIR)")
    args = ap.parse_args(argv)
    if args.cmd == "import":
        try:
            summary = import_collection(args.src, args.name, args.root, args.queries_per_landmark, args.val_landmarks,
                                        args.train_landmarks, args.seed, args.overwrite, args.pairs_per_landmark)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(format_summary(summary))
        return 0
    if args.cmd == "generate":
        paths = generate(args.preset, args.root, args.difficulty, args.seed, args.workers, args.overwrite)
        if args.distractors:
            paths["distractors"] = render_distractors(args.distractors, args.preset, args.root, args.difficulty,
                                                      args.seed, args.workers)
        for split, path in paths.items():
            print(f"{split}: {path}")
        return 0

    if args.cmd == "download" and (args.list or not args.names):
        print(listing())
        return 0
    try:
        for name in args.names:
            if args.cmd == "download":
                for path in download(name, args.root, parts=args.parts, mirror=args.mirror,
                                     keep_archives=args.keep_archives, retries=args.retries, timeout=args.timeout):
                    print(f"{name}: {path}")
            else:
                for path, digest in verify(name, args.root).items():
                    print(f"{name}: {path} sha256 {digest}")
    except (DownloadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
