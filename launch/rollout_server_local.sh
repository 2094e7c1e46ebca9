#!/usr/bin/env bash
# One node, disaggregated: start `rlkit rollout-server` (stock `vllm serve` processes) on their own devices, train
# on the others with rollout.engine=vllm_server pointed at them, and stop the servers when training ends (or fails).
#
#   launch/rollout_server_local.sh RECIPE [dotted.key=value ...]
#
# Environment (all optional):
#   ROLLOUT_SERVERS=1        vLLM servers to start            ROLLOUT_TP=1       GPUs per server
#   ROLLOUT_DEVICES          GPUs for the servers (default: the last SERVERS x TP)
#   TRAIN_DEVICES            GPUs for the trainer (default: the others)
#   ROLLOUT_CORES=1          CPU cores for the servers when there is no GPU (the trainer keeps the others)
#   ROLLOUT_PORT=8000        server i listens on 127.0.0.1:ROLLOUT_PORT + i
#   ACCELERATE_ARGS          default: --config_file launch/ddp.yaml (GPU) / --cpu --num_processes 1 (CPU)
# The trainer and the servers must not share a GPU: a device in both lists is refused.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    sed -n '2,14p' "$0"; exit 2
fi
RECIPE=$1; shift
SERVERS=${ROLLOUT_SERVERS:-1}; TP=${ROLLOUT_TP:-1}; PORT=${ROLLOUT_PORT:-8000}
MODEL=$(python -c 'import sys; from rlkit.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).model.name_or_path)' "$RECIPE" "$@")

SERVER_ARGS=(--model "$MODEL" --servers "$SERVERS" --tensor-parallel-size "$TP" --port "$PORT")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GPUS=$(nvidia-smi -L | wc -l); NEED=$((SERVERS * TP))
    ROLLOUT_DEVICES=${ROLLOUT_DEVICES:-$(seq -s, $((GPUS - NEED)) $((GPUS - 1)))}
    TRAIN_DEVICES=${TRAIN_DEVICES:-$( ((GPUS > NEED)) && seq -s, 0 $((GPUS - NEED - 1)) )}
    if [[ -z $TRAIN_DEVICES ]]; then
        echo "no GPU left for the trainer: $GPUS GPU(s), $NEED for the servers (ROLLOUT_SERVERS x ROLLOUT_TP)" >&2
        exit 2
    fi
    for d in ${ROLLOUT_DEVICES//,/ }; do
        if [[ ,$TRAIN_DEVICES, == *,$d,* ]]; then
            echo "GPU $d is in both ROLLOUT_DEVICES=$ROLLOUT_DEVICES and TRAIN_DEVICES=$TRAIN_DEVICES:" \
                 "give the trainer and the servers different GPUs" >&2
            exit 2
        fi
    done
    SERVER_ARGS+=(--devices "$ROLLOUT_DEVICES")
    export CUDA_VISIBLE_DEVICES=$TRAIN_DEVICES          # the trainer's GPUs only
    DEFAULT_ACCEL="--config_file launch/ddp.yaml"
else
    SERVER_ARGS+=(--cpu --cpu-cores "${ROLLOUT_CORES:-1}")
    DEFAULT_ACCEL="--cpu --num_processes 1"
fi
rlkit rollout-server "${SERVER_ARGS[@]}" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

ADDRESSES=$(python -c "import sys; print(','.join(f'127.0.0.1:{int(sys.argv[1]) + i}' for i in range(int(sys.argv[2]))))" "$PORT" "$SERVERS")
# shellcheck disable=SC2086
accelerate launch ${ACCELERATE_ARGS:-$DEFAULT_ACCEL} -m rlkit.cli train "$RECIPE" "$@" \
    rollout.engine.name=vllm_server "rollout.engine.addresses=$ADDRESSES"
