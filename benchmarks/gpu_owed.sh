#!/usr/bin/env bash
# Every GPU measurement the open notes owe, in one call (one device session holds 30 min:
# pick stages). Results land under benchmarks/results/ with the GPU's name inside.
#
#   bash benchmarks/gpu_owed.sh kernels throughput          # ~10 min
#   bash benchmarks/gpu_owed.sh train-image train-video     # 15 min each
#   bash benchmarks/gpu_owed.sh train-speech                # 15 min; espeak-ng speech + transcripts
#
# The GPU machine cannot download and may lack espeak-ng: make the speech here first and
# carry it (about 30 MB):  python -c "from anytok.data.synthetic import make_speech_dataset as m;
#   m('data/gpu_speech', 600); m('data/gpu_speech_val', 60, seed=1)"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
stage=${1:-}
while [ -n "$stage" ]; do
  shift
  case "$stage" in
    kernels)
      $PY benchmarks/nearest_codeword.py --out benchmarks/results/nearest_codeword
      $PY benchmarks/nearest_codeword.py --metric cosine --dtypes float32 \
        --out benchmarks/results/nearest_codeword_cosine
      $PY benchmarks/residual_encode.py --out benchmarks/results/residual_encode
      $PY -m pytest -q -m gpu tests/test_kernels.py ;;
    throughput)
      $PY benchmarks/codec_throughput.py --compile --out benchmarks/results/codec_throughput ;;
    train-image)
      $PY -c "from anytok.data.synthetic import make_dataset as m; m('image', 'data/gpu_images', 2000, size=256); m('image', 'data/gpu_images_val', 200, size=256, seed=1)"
      for recipe in titok vqgan; do
        timeout 960 anytok train recipes/image/$recipe.yaml data.train=data/gpu_images \
          train.steps=100000 checkpoint.every=1000 --run-dir runs/gpu_$recipe --device cuda || true
        anytok export runs/gpu_$recipe runs/gpu_$recipe/export
        anytok bench -m runs/gpu_$recipe/export data/gpu_images_val -o benchmarks/results/train_$recipe --max-items 200 --device cuda
      done ;;
    train-video)
      $PY -c "from anytok.data.synthetic import make_dataset as m; m('video', 'data/gpu_clips', 400, size=128, frames=17, cuts=True); m('video', 'data/gpu_clips_val', 50, size=128, frames=17, seed=1, cuts=True)"
      timeout 960 anytok train recipes/video/causal3d_small.yaml data.train=data/gpu_clips \
        checkpoint.every=500 --run-dir runs/gpu_causal3d --device cuda || true
      anytok export runs/gpu_causal3d runs/gpu_causal3d/export
      anytok bench -m runs/gpu_causal3d/export data/gpu_clips_val -o benchmarks/results/train_causal3d --max-items 50 --device cuda ;;
    train-speech)
      speech=data/gpu_speech/manifest.jsonl
      [ -f "$speech" ] || $PY -c "from anytok.data.synthetic import make_speech_dataset as m; m('data/gpu_speech', 600); m('data/gpu_speech_val', 60, seed=1)"
      timeout 960 anytok train recipes/audio/tadicodec.yaml data.train="$speech" train.steps=6000 \
        train.batch_size=16 checkpoint.every=500 --run-dir runs/gpu_tadicodec --device cuda || true
      anytok export runs/gpu_tadicodec runs/gpu_tadicodec/export
      anytok bench -m runs/gpu_tadicodec/export data/gpu_speech_val -o benchmarks/results/train_tadicodec \
        --max-items 50 --sweep steps=4,8,16,32 --device cuda ;;
    *) echo "unknown stage $stage (kernels | throughput | train-image | train-video | train-speech)"; exit 2 ;;
  esac
  stage=${1:-}
done
