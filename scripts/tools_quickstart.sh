#!/usr/bin/env bash
# Set up (or reuse) .venv, then: build a tiny model whose chat template knows tools, write 2-digit x 2-digit
# products with a multiply(a, b) tool and an imperfect teacher, SFT warm start on the teacher's conversations, GRPO
# with the tool environment against the true products (held-out accuracy before/after), and PNG curves.
# Extra arguments are recipe overrides, e.g.: bash scripts/tools_quickstart.sh rollout.engine=hf
# SEED=1 bash scripts/tools_quickstart.sh repeats it with other data, initialisation and sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RLKIT=.venv/bin/rlkit
OUT=runs/tools_quickstart
SEED="${SEED:-0}"
rm -rf "$OUT"
# --tools: the chat template lists tools compactly ("Tools: multiply(a, b)") and turns end at <|im_end|>.
$RLKIT tiny-model "$OUT/tiny-init" --size tiny --tools --seed "$SEED"
# The teacher calls the tool on 25 % of the problems and copies its result; on the rest it answers with the
# product rounded to hundreds (37*52= -> 1900), which is almost always wrong.
$RLKIT make-data tool_multiply "$OUT/data" --train 2000 --eval 200 --tool-rate 0.25 --seed "$SEED"
# Trains only the assistant turns (the <tool_call> and the final answer, each with its <|im_end|>). The tiny model
# learns to copy the operands into the call only after ~12k conversations (a sudden transition) and the tool's
# result into its answer a few hundred steps later, hence 1500 steps of 16 (about 3-4 minutes on 2 CPU cores;
# 600 steps of 32 call the tool but do not copy its result, and RL then finds no reward).
$RLKIT sft --model "$OUT/tiny-init" --data "$OUT/data/train.jsonl" --messages-column teacher_messages \
  --tools rlkit.tasks.tool_multiply:multiply --output "$OUT/sft" --steps 1500 --batch-size 16 --lr 3e-3 \
  --seed "$SEED"
$RLKIT train recipes/tools_quickstart.yaml train.seed="$SEED" "$@"
$RLKIT plot "$OUT/grpo"
