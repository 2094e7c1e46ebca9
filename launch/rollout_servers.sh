#!/usr/bin/env bash
# Start `rlkit rollout-server` (stock `vllm serve` processes) on dedicated nodes, ROLLOUT_SERVERS per node, print
# the trainer's settings, and keep running until interrupted (Ctrl-C / scancel stops them all).
#
#   launch/rollout_servers.sh MODEL HOST [HOST ...]
#   launch/rollout_servers.sh --dry-run MODEL HOST ...      # print the settings and the command, start nothing
#
# The servers bind ROLLOUT_BIND (default 0.0.0.0) with --allow-remote: vLLM's RL routes are unauthenticated, so
# the nodes must be on a private network or firewalled to the trainer's nodes (README, "Rollout servers").
# Environment (all optional):
#   ROLLOUT_SERVERS=1   servers per node         ROLLOUT_TP=1        GPUs per server (SERVERS x TP <= GPUs)
#   ROLLOUT_PORT=8000   server i listens on ROLLOUT_PORT + i    ROLLOUT_LAUNCHER=srun|ssh (srun inside SLURM)
#   ROLLOUT_BIND=0.0.0.0  interface to bind        RLKIT_DIR=$PWD  directory on the remote node (ssh; same env)
set -euo pipefail
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0"; exit 2
fi
MODEL=$1; shift
HOSTS=("$@")
SERVERS=${ROLLOUT_SERVERS:-1}; TP=${ROLLOUT_TP:-1}; PORT=${ROLLOUT_PORT:-8000}; BIND=${ROLLOUT_BIND:-0.0.0.0}
LAUNCHER=${ROLLOUT_LAUNCHER:-$([[ -n ${SLURM_JOB_ID:-} ]] && echo srun || echo ssh)}

SERVER=(rlkit rollout-server --model "$MODEL" --host "$BIND" --allow-remote --servers "$SERVERS"
        --tensor-parallel-size "$TP" --port "$PORT")
ADDRESSES=""
for host in "${HOSTS[@]}"; do
    for ((i = 0; i < SERVERS; i++)); do ADDRESSES+="${ADDRESSES:+,}$host:$((PORT + i))"; done
done
echo "rollout.engine.addresses=$ADDRESSES"
echo "rollout.engine.allow_remote=true"
if [[ $DRY -eq 1 ]]; then
    printf '%s\n' "${SERVER[*]}"
    exit 0
fi

PIDS=()
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait || true' EXIT INT TERM
for host in "${HOSTS[@]}"; do
    if [[ $LAUNCHER == srun ]]; then     # a job step on that node
        srun --nodes=1 --ntasks=1 --nodelist="$host" --overlap "${SERVER[@]}" &
    else
        ssh "$host" "cd '${RLKIT_DIR:-$PWD}' && exec ${SERVER[*]}" &
    fi
    PIDS+=($!)
done
wait -n                                 # one node's launcher exiting (all its servers dead) stops the rest
