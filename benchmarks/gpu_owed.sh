#!/usr/bin/env bash
# Every GPU measurement the issue notes still owe, in stages that each fit one device call.
#
# Limits of the lent machine (/work/.library/device/README.md): one command runs at most
# 10 minutes, a session has 30 minutes of device time (machine start included), only files
# under $OUT come back (at most 8 per call), and nothing can be downloaded there. So:
#
#   here:    bash benchmarks/gpu_wheels.sh kernels      # .whl/ (0.3 MB; add `train` for the
#                                                       #  CLI / training stages, 43 MB)
#   device:  run(command="bash benchmarks/gpu_owed.sh kernels-tests", carry=[".whl"])
#            ... one stage per call, a few seconds apart so the machine stays warm (Triton's
#            compile and autotuning caches are then reused) ...
#   here:    copy the returned files into benchmarks/results/<stage name>/ and commit them
#
# Stages and their expected length on one H100 (estimates: nothing here has run on a GPU yet):
#   kernels-tests   pytest -m gpu tests/test_kernels.py, then residual_encode.py   ~6-8 min
#   kernels-fp32    nearest_codeword.py, euclidean, fp32 inputs                    ~8-9 min
#   kernels-bf16    nearest_codeword.py, euclidean, bf16 inputs                    ~5-6 min
#   kernels-cosine  nearest_codeword.py, cosine, fp32 inputs                       ~8-9 min
#   throughput      codec_throughput.py --compile                                  needs `train` wheels
#   train-image | train-video | train-speech   TRAIN_SECONDS (default 420) of training from
#                   the run directory's last checkpoint, export, bench; run a stage again on a
#                   warm machine to train longer (needs `train` wheels)
# Every stage stops itself before the 10-minute limit (STAGE_SECONDS, default 570) and the
# benchmark scripts write their tables after every row, so a stage cut short still returns
# what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
R=${OUT:-benchmarks/results}  # where results go: $OUT on the device machine
STAGE_SECONDS=${STAGE_SECONDS:-570}
mkdir -p "$R"
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
limit() { timeout --signal=INT --kill-after=20 "$STAGE_SECONDS" "$@"; }
nc() { limit $PY benchmarks/nearest_codeword.py "$@"; }

stage=${1:-}
[ -n "$stage" ] || { echo "usage: gpu_owed.sh STAGE [STAGE ...] (see the header)"; exit 2; }
status=0
while [ -n "$stage" ]; do
  shift
  case "$stage" in
    kernels-tests)
      # Untuned defaults (one compilation per new shape, not one per configuration);
      # test_gpu_every_search_config_is_exact runs every configuration explicitly.
      ANYTOK_TRITON_AUTOTUNE=0 limit $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py \
        -o addopts= --junitxml="$R/kernels_gpu_tests.xml" 2>&1 | tee "$R/kernels_gpu_tests.log"
      status=$((status | PIPESTATUS[0]))
      limit $PY benchmarks/residual_encode.py --out "$R/residual_encode" || status=1 ;;
    kernels-fp32)
      nc --dtypes float32 --out "$R/nearest_codeword_fp32" || status=1 ;;
    kernels-bf16)
      nc --dtypes bfloat16 --out "$R/nearest_codeword_bf16" || status=1 ;;
    kernels-cosine)
      nc --metric cosine --dtypes float32 --out "$R/nearest_codeword_cosine" || status=1 ;;
    throughput)
      limit $PY benchmarks/codec_throughput.py --compile --out "$R/codec_throughput" || status=1 ;;
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
