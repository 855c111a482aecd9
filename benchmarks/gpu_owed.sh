#!/usr/bin/env bash
# Every GPU measurement the issue notes still owe, in stages that each fit one device call.
#
# Limits of the lent machine (/work/.library/device/README.md, as of 2026-12): one command
# runs at most 10 minutes, a task has 15 minutes of device time in all (machine start, idle
# time and every try included), only files under $OUT come back (at most 8 per call, at
# most 2 folders down), and nothing can be downloaded there. So #4's whole check is ONE call:
#
#   here:    bash benchmarks/gpu_wheels.sh kernels      # .whl/ (0.3 MB)
#   device:  run(command="OUT=$OUT bash benchmarks/gpu_owed.sh kernels", carry=[".whl"],
#                kind="nvidia-h200", timeout_s=600)
#   here:    copy the returned files into benchmarks/results/ and commit them
#
# Name the H200: the issue's anchors are H200 numbers, and vector-quantize-pytorch's train
# step at 16384 x 256 x 262144 needs 96 GiB (an H100 has 79: its goals would be "missing").
# `OUT=$OUT` passes the folder that comes back even if the device shell does not export it.
#
# `kernels` runs, most important first, each part bounded by what is left of STAGE_SECONDS
# (default 540) so the call ends inside its 10 minutes with every file written so far:
#   1. nearest_codeword.py, euclidean, fp32 and bf16: the issue's table     (cap 300 s)
#   2. pytest -m gpu tests/test_kernels.py (8 xdist workers, untuned tiles) (cap 130 s)
#   3. nearest_codeword.py, cosine and offset data, two anchors, search only (cap 70 s)
#   4. residual_encode.py, the 48000-row anchor                             (the rest)
# 8 files in all, with gpu_owed.log (everything printed, tracebacks included). Each part is
# also a stage of its own, for a rerun on a warm machine:
#   kernels-table | kernels-tests | kernels-cosine | kernels-residual
# (the part caps are estimates: nothing here has run on a GPU yet).
#
# Stages for other issues, one call each (they need the `train` wheels, 43 MB):
#   throughput      codec_throughput.py --compile
#   sync-tests      the GPU tests that training steps never wait for the device (quantizers
#                   under set_sync_debug_mode("error"), tiny recipes counting CUDA's warnings)
#   train-image | train-video | train-speech   TRAIN_SECONDS (default 420) of training from
#                   the run directory's last checkpoint, export, bench; run a stage again on a
#                   warm machine to train longer
# The benchmark scripts write their tables after every row, so a part cut short still
# returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
R=${OUT:-benchmarks/results}  # where results go: $OUT on the device machine
STAGE_SECONDS=${STAGE_SECONDS:-540}
mkdir -p "$R"
exec > >(tee -a "$R/gpu_owed.log") 2>&1  # tracebacks come back even past the output tail
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl}  # from gpu_wheels.sh
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # anytok from this checkout, not installed
anytok() { $PY -m anytok.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# Preflight, before the clock starts: a missing wheel would turn every baseline column into
# an error (and residual_encode.py would stop at its first row).
$PY -c "import vector_quantize_pytorch, anytok.quantizers.kernels.triton_search" || {
  echo "preflight failed: carry .whl from gpu_wheels.sh (see the header)"; exit 1; }
deadline=$((SECONDS + STAGE_SECONDS))
# part CAP CMD...: run CMD for at most CAP seconds and never past the deadline; SIGINT
# first, so the benchmarks write what they measured.
part() {
  local cap=$1 left=$((deadline - SECONDS))
  shift
  if [ "$left" -lt 20 ]; then echo "== skipped, no time left: $*"; return 1; fi
  [ "$cap" -lt "$left" ] || cap=$left
  echo "== $(date +%T) ${cap}s at most: $*"
  timeout --signal=INT --kill-after=15 "$cap" "$@"
}
nc() { local cap=$1; shift; part "$cap" $PY benchmarks/nearest_codeword.py "$@"; }
kernels_table() { nc "${1:-$STAGE_SECONDS}" --dtypes float32,bfloat16 --out "$R/nearest_codeword"; }
kernels_tests() {
  # Untuned defaults (one compilation per new shape, not one per configuration);
  # test_gpu_every_search_config_is_exact runs every configuration explicitly.
  local workers=()
  $PY -c "import xdist" 2>/dev/null && workers=(-n 8)
  ANYTOK_TRITON_AUTOTUNE=0 part "${1:-$STAGE_SECONDS}" $PY -m pytest -q -rfEs -m gpu \
    -p no:cacheprovider -o addopts= "${workers[@]}" tests/test_kernels.py 2>&1 \
    | tee "$R/kernels_gpu_tests.log"
  return "${PIPESTATUS[0]}"
}
kernels_cosine() {
  # The search against its baselines at two anchors, for cosine and for euclidean data with
  # a common offset of 3 (centred on the codebook mean); the goal table is part 1's.
  nc "${1:-$STAGE_SECONDS}" --cases cosine,euclidean@3 --dtypes float32,bfloat16 \
    --sizes "48000,128,1024;65536,256,16384" \
    --skip vqp,anytok_train,nostage,nosplit,compiled --out "$R/nearest_codeword_cosine"
}
kernels_residual() {
  part "${1:-$STAGE_SECONDS}" $PY benchmarks/residual_encode.py --rows "${RESIDUAL_ROWS:-48000}" \
    --out "$R/residual_encode"
}

stage=${1:-}
[ -n "$stage" ] || { echo "usage: gpu_owed.sh STAGE [STAGE ...] (see the header)"; exit 2; }
status=0
while [ -n "$stage" ]; do
  shift
  case "$stage" in
    kernels)
      kernels_table 300 || status=1
      kernels_tests 130 || status=1
      kernels_cosine 70 || status=1
      kernels_residual || status=1 ;;
    kernels-table) kernels_table || status=1 ;;
    kernels-tests) kernels_tests || status=1 ;;
    kernels-cosine) kernels_cosine || status=1 ;;
    kernels-residual) kernels_residual || status=1 ;;
    sync-tests)
      part "$STAGE_SECONDS" $PY -m pytest -q -rfEs -m gpu -p no:cacheprovider -o addopts= \
        -k never_wait tests/test_quantizers_vq.py tests/test_train_tiny.py 2>&1 \
        | tee "$R/sync_gpu_tests.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    throughput)
      part "$STAGE_SECONDS" $PY benchmarks/codec_throughput.py --compile --out "$R/codec_throughput" || status=1 ;;
    train-image)
      [ -d data/gpu_images ] || $PY -c "from anytok.data.synthetic import make_dataset as m; m('image', 'data/gpu_images', 2000, size=256); m('image', 'data/gpu_images_val', 200, size=256, seed=1)"
      for recipe in titok vqgan; do
        timeout --signal=INT "$((TRAIN_SECONDS / 2))" $PY -m anytok.cli train \
          recipes/image/$recipe.yaml data.train=data/gpu_images train.steps=100000 \
          checkpoint.every=1000 --run-dir runs/gpu_$recipe --device cuda --resume
        anytok export runs/gpu_$recipe runs/gpu_$recipe/export
        anytok bench -m runs/gpu_$recipe/export data/gpu_images_val -o "$R/train_$recipe" \
          --max-items 200 --device cuda || status=1
      done ;;
    train-video)
      [ -d data/gpu_clips ] || $PY -c "from anytok.data.synthetic import make_dataset as m; m('video', 'data/gpu_clips', 400, size=128, frames=17, cuts=True); m('video', 'data/gpu_clips_val', 50, size=128, frames=17, seed=1, cuts=True)"
      timeout --signal=INT "$TRAIN_SECONDS" $PY -m anytok.cli train \
        recipes/video/causal3d_small.yaml data.train=data/gpu_clips checkpoint.every=500 \
        --run-dir runs/gpu_causal3d --device cuda --resume
      anytok export runs/gpu_causal3d runs/gpu_causal3d/export
      anytok bench -m runs/gpu_causal3d/export data/gpu_clips_val -o "$R/train_causal3d" \
        --max-items 50 --device cuda || status=1 ;;
    train-speech)
      # The GPU machine may lack espeak-ng: make the speech here first and carry it (~30 MB):
      #   python -c "from anytok.data.synthetic import make_speech_dataset as m;
      #              m('data/gpu_speech', 600); m('data/gpu_speech_val', 60, seed=1)"
      speech=data/gpu_speech/manifest.jsonl
      [ -f "$speech" ] || $PY -c "from anytok.data.synthetic import make_speech_dataset as m; m('data/gpu_speech', 600); m('data/gpu_speech_val', 60, seed=1)"
      timeout --signal=INT "$TRAIN_SECONDS" $PY -m anytok.cli train recipes/audio/tadicodec.yaml \
        data.train="$speech" train.steps=6000 train.batch_size=16 checkpoint.every=500 \
        --run-dir runs/gpu_tadicodec --device cuda --resume
      anytok export runs/gpu_tadicodec runs/gpu_tadicodec/export
      anytok bench -m runs/gpu_tadicodec/export data/gpu_speech_val -o "$R/train_tadicodec" \
        --max-items 50 --sweep steps=4,8,16,32 --device cuda || status=1 ;;
    *) echo "unknown stage $stage (see the header)"; exit 2 ;;
  esac
  stage=${1:-}
done
exit $status
