#!/usr/bin/env bash
# Set up (or reuse) .venv, then: build a tiny model, write the synthetic arithmetic task, SFT warm start,
# GRPO with held-out accuracy before/after, and PNG curves. About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RLKIT=.venv/bin/rlkit
OUT=runs/quickstart
rm -rf "$OUT"
$RLKIT tiny-model "$OUT/tiny-init" --size tiny
$RLKIT make-data arithmetic "$OUT/data" --train 20000 --eval 500 --difficulties 2 --ops +-
$RLKIT sft --model "$OUT/tiny-init" --data "$OUT/data/train.jsonl" --output "$OUT/sft" --steps 300
$RLKIT train recipes/quickstart.yaml "$@"
$RLKIT plot "$OUT/grpo"
