#!/usr/bin/env bash
# Start `rlkit rollout-server` on dedicated nodes (one server per node, ROLLOUT_WORKERS vLLM engines each), print
# the addresses for rollout.engine.addresses, and keep running until interrupted (Ctrl-C / scancel stops them all).
#
#   RLKIT_ROLLOUT_AUTHKEY=$(openssl rand -hex 16) launch/rollout_servers.sh MODEL HOST [HOST ...]
#   launch/rollout_servers.sh --dry-run MODEL HOST ...      # print the addresses and commands, start nothing
#
# The servers listen on 0.0.0.0, so RLKIT_ROLLOUT_AUTHKEY is required (the control channel is pickle over TCP):
# export the same value for the trainer. Environment (all optional):
#   ROLLOUT_WORKERS=1   engines per node          ROLLOUT_TP=1        GPUs per engine (WORKERS x TP <= GPUs)
#   ROLLOUT_PORT=51300  engine i listens on ROLLOUT_PORT + i      ROLLOUT_LAUNCHER=srun|ssh (srun inside SLURM)
#   RLKIT_DIR=$PWD      directory to run in on the remote node (ssh; must hold the same environment)
set -euo pipefail
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0"; exit 2
fi
MODEL=$1; shift
HOSTS=("$@")
WORKERS=${ROLLOUT_WORKERS:-1}; TP=${ROLLOUT_TP:-1}; PORT=${ROLLOUT_PORT:-51300}
LAUNCHER=${ROLLOUT_LAUNCHER:-$([[ -n ${SLURM_JOB_ID:-} ]] && echo srun || echo ssh)}
if [[ $DRY -eq 0 && -z ${RLKIT_ROLLOUT_AUTHKEY:-} ]]; then
    echo "set RLKIT_ROLLOUT_AUTHKEY to a shared secret (e.g. export RLKIT_ROLLOUT_AUTHKEY=\$(openssl rand -hex 16))" \
         "and export the same value for the trainer" >&2
    exit 2
fi

SERVER=(rlkit rollout-server --model "$MODEL" --host 0.0.0.0 --workers "$WORKERS" --tensor-parallel-size "$TP"
        --port "$PORT")
ADDRESSES=""
for host in "${HOSTS[@]}"; do
    for ((i = 0; i < WORKERS; i++)); do ADDRESSES+="${ADDRESSES:+,}$host:$((PORT + i))"; done
done
echo "rollout.engine.addresses=$ADDRESSES"
if [[ $DRY -eq 1 ]]; then
    printf '%s\n' "${SERVER[*]}"
    exit 0
fi

PIDS=()
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait || true' EXIT INT TERM
for host in "${HOSTS[@]}"; do
    if [[ $LAUNCHER == srun ]]; then     # a job step on that node; srun passes the environment (authkey included)
        srun --nodes=1 --ntasks=1 --nodelist="$host" --overlap "${SERVER[@]}" &
    else                                 # the key goes through stdin, not the command line (visible in ps)
        ssh "$host" "read -r RLKIT_ROLLOUT_AUTHKEY; export RLKIT_ROLLOUT_AUTHKEY; cd '${RLKIT_DIR:-$PWD}' && exec ${SERVER[*]}" \
            <<<"$RLKIT_ROLLOUT_AUTHKEY" &
    fi
    PIDS+=($!)
done
wait -n                                 # one server exiting (all its workers dead) stops the rest
