#!/usr/bin/env bash
# Set up (or reuse) .venv, then: build a tiny model, write the synthetic arithmetic task with an imperfect
# teacher, SFT warm start on the teacher's answers, GRPO against the true answers with held-out accuracy
# before/after, and PNG curves. About 3-5 minutes on 2 CPU cores after set-up.
# Extra arguments are recipe overrides, e.g.: bash scripts/quickstart.sh rollout.engine=hf
# SEED=1 bash scripts/quickstart.sh repeats it with other data, initialisation and sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RLKIT=.venv/bin/rlkit
OUT=runs/quickstart
SEED="${SEED:-0}"
rm -rf "$OUT"
$RLKIT tiny-model "$OUT/tiny-init" --size tiny --seed "$SEED"
# 2-digit + 1-digit sums: 650 train / 250 held-out problems; the teacher forgets the ones-column carry on 80 %
# of the problems that have one (47+8= -> 45), so its warm-started student inherits the mistake.
$RLKIT make-data arithmetic "$OUT/data" --train 650 --eval 250 --difficulties 2 --b-digits 1 --ops + \
  --teacher-error 0.8 --seed "$SEED"
$RLKIT sft --model "$OUT/tiny-init" --data "$OUT/data/train.jsonl" --answer-column teacher_answer \
  --output "$OUT/sft" --steps 600 --seed "$SEED"
$RLKIT train recipes/quickstart.yaml train.seed="$SEED" "$@"
$RLKIT plot "$OUT/grpo"
