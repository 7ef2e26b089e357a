#!/usr/bin/env bash
# The measurements and checks that need a CUDA GPU, as one command that fits a short loan of a
# GPU machine (one call of at most 10 minutes). That machine is expected to hold PyTorch,
# torchvision, timm, Lightning and torchmetrics, but neither rsfm's other dependencies nor
# ../shared/datasets, so the checks below use only what those packages cover, and the images
# travel with the working tree:
#
#   benchmarks/gpu_checks.sh prepare        # here: copies the images the steps read (and, if named,
#                                           # the authors' model code) into .gpu/, git-ignored (~27 MB)
#   benchmarks/gpu_checks.sh run OUT [STEP...]   # there: runs the steps (default: all); OUT gets
#                                           # log.txt, summary.txt and the throughput JSONs
#
# The steps, each under its own time limit, going on when one fails (its exit status is logged).
# All of them take up to about 12 minutes, more than one call allows: run them in two calls,
# `run $OUT device tests throughput` (up to ~8.5 min), then `run $OUT loader rotated_ops`.
#   1. the device, torch and the packages found;
#   2. the tests that need CUDA: JPEG decoding on the GPU (data.decode: device, nvJPEG) against
#      the workers' decoding (tests/data/test_device_decode.py), the rotated IoU, NMS and
#      RoIAlignRotated kernels against the CPU's, Oriented R-CNN's and Mask R-CNN's loss and
#      prediction on CUDA (on real HIT-UAV and iSAID images);
#   3. benchmarks/throughput.py at batch 128, 256 and 512: MAE and SelectiveMAE, eager and
#      compiled (trainer.compile), bf16, TFLOP/s and MFU, the token selection alone, and the
#      authors' models when prepare found them (OFFICIAL_MAE, OFFICIAL_SMAE);
#   4. benchmarks/loader.py from a folder, decoded in the workers vs on the GPU, per worker count,
#      beside the model's training images/s on the GPU;
#   5. benchmarks/rotated_ops.py --device cuda.
# Environment: PYTHON (default python3), OFFICIAL_MAE and OFFICIAL_SMAE (for prepare: folders of
# the authors' MAE and SelectiveMAE repositories).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the same commands
STAGE=.gpu

prepare() {
    local shared=../shared/datasets data=$STAGE/datasets
    [ -d "$shared/aid" ] || { echo "prepare: $shared/aid not found" >&2; exit 1; }
    rm -rf "$STAGE" && mkdir -p "$data/aid"
    # every 5th image of each AID class: 1,411 JPEGs of 30 classes
    for class in "$shared"/aid/*/; do
        name=$(basename "$class")
        mkdir -p "$data/aid/$name"
        ls "$class" | grep -i '\.jpg$' | sort | awk 'NR % 5 == 1' | while read -r f; do
            cp "$class/$f" "$data/aid/$name/"
        done
    done
    # what the CUDA tests of the detectors read: one HIT-UAV frame, iSAID's P0005
    mkdir -p "$data/hit_uav/Annotations" "$data/hit_uav/JPEGImages" "$data/isaid_dota"
    cp "$shared/hit_uav/Annotations/1_60_30_0_04086.xml" "$data/hit_uav/Annotations/" || exit 1
    cp "$shared/hit_uav/JPEGImages/1_60_30_0_04086.jpg" "$data/hit_uav/JPEGImages/" || exit 1
    cp -r "$shared/isaid_dota/train" "$data/isaid_dota/" || exit 1
    for pair in "mae:${OFFICIAL_MAE:-}" "smae:${OFFICIAL_SMAE:-}"; do
        local dest=${pair%%:*} src=${pair#*:}
        [ -n "$src" ] || continue
        [ -d "$src" ] || { echo "prepare: $src not found" >&2; exit 1; }
        mkdir -p "$STAGE/official/$dest"
        cp "$src"/*.py "$STAGE/official/$dest/"
        [ -d "$src/util" ] && cp -r "$src/util" "$STAGE/official/$dest/"
    done
    # not on that machine, so their wheels travel: torchdata (rsfm's resumable loader, pure Python),
    # simplejpeg (rsfm's JPEG decoder) and shapely (rotated_ops' reference); built for that
    # machine's CPython 3.12 on x86-64
    local pkg version
    for pkg in torchdata simplejpeg shapely; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$pkg'))") || exit 1
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$STAGE/wheels" \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 "$pkg==$version" || exit 1
    done
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    echo "prepared $(find "$data/aid" -name '*.jpg' | wc -l) AID JPEGs, $(du -sh "$STAGE" | cut -f1) in $STAGE/"
    echo "on the GPU machine, carrying $STAGE: benchmarks/gpu_checks.sh run \$OUT device tests throughput, then run \$OUT loader rotated_ops"
}

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output added to OUT/log.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    echo "== $name: $*" >> "$OUT_DIR/log.txt"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/log.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT_DIR/summary.txt"
}

run() {
    OUT_DIR=${1:?usage: benchmarks/gpu_checks.sh run OUT [STEP...]}
    shift
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=(device tests throughput loader rotated_ops)
    for s in "${steps[@]}"; do
        case $s in
            device | tests | throughput | loader | rotated_ops) ;;
            *) echo "run: unknown step '$s' (device, tests, throughput, loader, rotated_ops)" >&2; exit 2 ;;
        esac
    done
    mkdir -p "$OUT_DIR"
    : > "$OUT_DIR/summary.txt"
    : > "$OUT_DIR/log.txt"
    local data=$STAGE/datasets
    [ -d "$data/aid" ] || { echo "run: $data/aid not found: run 'benchmarks/gpu_checks.sh prepare' first and carry $STAGE" >&2; exit 1; }
    local wheel
    for wheel in "$STAGE"/wheels/*.whl; do  # one by one: a wheel built for another Python is skipped, named
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/rsfm_site "$wheel" \
            || echo "run: $wheel does not install here" >&2
    done
    export PYTHONPATH="$PWD/src:/tmp/rsfm_site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    # the tests read ../shared/datasets
    if [ ! -e ../shared/datasets ]; then
        mkdir -p ../shared && ln -s "$PWD/$data" ../shared/datasets \
            || echo "run: could not link ../shared/datasets to $data: the tests will be skipped" >&2
    fi
    local official=()
    [ -d "$STAGE/official/mae" ] && official+=(--official-mae "$STAGE/official/mae")
    [ -d "$STAGE/official/smae" ] && official+=(--official-smae "$STAGE/official/smae")

    want() { [[ " ${steps[*]} " == *" $1 "* ]]; }

    want device && step device 30 bash -c "nvidia-smi -L; $PYTHON -c 'import torch, torchvision, timm, lightning, torchmetrics as m; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0)); print(\"torchvision\", torchvision.__version__, \"timm\", timm.__version__, \"lightning\", lightning.__version__, \"torchmetrics\", m.__version__)'"
    want tests && step tests 120 "$PYTHON" -m pytest -n 0 -p no:cacheprovider -q -rs tests/data/test_device_decode.py \
        tests/ops/test_rotated_iou.py tests/ops/test_rotated_nms.py tests/ops/test_roi_align_rotated.py \
        tests/models/test_oriented_rcnn.py tests/models/test_mask_rcnn.py -k cuda
    want throughput && for batch in 128 256 512; do
        step "throughput_b$batch" 120 "$PYTHON" benchmarks/throughput.py --data "$data/aid" --device "$DEVICE" --batch-size "$batch" \
            --compile --selection --rounds 3 --json "$OUT_DIR/throughput_b$batch.json" "${official[@]}"
    done
    want loader && step loader 150 "$PYTHON" benchmarks/loader.py --data "$data/aid" --device "$DEVICE" --sources folder --images 1400 --img-size 224 \
        --size base --patch-size 16 --workers 0 2 4 8 --batches 6 --rounds 2
    want rotated_ops && step rotated_ops 60 "$PYTHON" benchmarks/rotated_ops.py --device "$DEVICE"
    echo "== done"; cat "$OUT_DIR/summary.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: benchmarks/gpu_checks.sh prepare | run OUT [STEP...]" >&2; exit 2 ;;
esac
