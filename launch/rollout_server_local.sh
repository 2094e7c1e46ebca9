#!/usr/bin/env bash
# One node, disaggregated: start `rlkit rollout-server` on its own devices, train on the others with
# rollout.engine=vllm_server pointed at it, and stop the workers when training ends (or fails).
#
#   launch/rollout_server_local.sh RECIPE [dotted.key=value ...]
#
# Environment (all optional):
#   ROLLOUT_WORKERS=1        vLLM engines to start            ROLLOUT_TP=1       GPUs per engine
#   ROLLOUT_DEVICES=6,7      GPUs for the workers             TRAIN_DEVICES=0,1,2,3  GPUs for the trainer
#   ROLLOUT_CORES=1          CPU cores for the workers when there is no GPU (the trainer keeps the others)
#   ROLLOUT_PORT=51300       worker i listens on ROLLOUT_PORT + i
#   ACCELERATE_ARGS          default: --config_file launch/ddp.yaml (GPU) / --cpu --num_processes 1 (CPU)
# The trainer and the workers must not share a GPU: rlkit refuses that with an error naming the GPU.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    sed -n '2,14p' "$0"; exit 2
fi
RECIPE=$1; shift
WORKERS=${ROLLOUT_WORKERS:-1}; TP=${ROLLOUT_TP:-1}; PORT=${ROLLOUT_PORT:-51300}
MODEL=$(python -c 'import sys; from rlkit.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).model.name_or_path)' "$RECIPE" "$@")

SERVER_ARGS=(--model "$MODEL" --workers "$WORKERS" --tensor-parallel-size "$TP" --port "$PORT")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    [[ -n ${ROLLOUT_DEVICES:-} ]] && SERVER_ARGS+=(--devices "$ROLLOUT_DEVICES")
    DEFAULT_ACCEL="--config_file launch/ddp.yaml"
else
    SERVER_ARGS+=(--cpu --cpu-cores "${ROLLOUT_CORES:-1}")
    DEFAULT_ACCEL="--cpu --num_processes 1"
fi
rlkit rollout-server "${SERVER_ARGS[@]}" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

ADDRESSES=$(python -c "import sys; print(','.join(f'127.0.0.1:{int(sys.argv[1]) + i}' for i in range(int(sys.argv[2]))))" "$PORT" "$WORKERS")
[[ -n ${TRAIN_DEVICES:-} ]] && export CUDA_VISIBLE_DEVICES=$TRAIN_DEVICES   # the trainer's GPUs only
# shellcheck disable=SC2086
accelerate launch ${ACCELERATE_ARGS:-$DEFAULT_ACCEL} -m rlkit.cli train "$RECIPE" "$@" \
    rollout.engine.name=vllm_server "rollout.engine.addresses=$ADDRESSES"
