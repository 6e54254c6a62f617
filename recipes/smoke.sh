#!/usr/bin/env bash
# Check an install on one GPU: two RESTRAIN training steps on a small model, end to end through the
# same path as the experiment scripts (bundled data -> offline scoring of u_x with the base model ->
# verl's stock main_ppo with the restrain estimator, reward manager and trainer).
#
#   RESTRAIN_SMOKE_MODEL=Qwen/Qwen2.5-0.5B-Instruct bash recipes/smoke.sh [HYDRA_OVERRIDE...]
#
# Needs a CUDA GPU, vLLM (pip install -e ".[vllm]") and the model (a local path, or a hub id already
# in the local cache). Takes a few minutes for a 0.5B model. It passes when verl's metrics log of
# step 2 holds the restrain/ metrics; their values are printed at the end. Everything is written
# under SMOKE_DIR (default: a new temporary directory). DRY_RUN=1 prints the commands instead.
set -euo pipefail

if [[ -z "${RESTRAIN_SMOKE_MODEL:-}" ]]; then
    echo "[smoke] set RESTRAIN_SMOKE_MODEL to a small causal LM (local path or cached hub id)" >&2
    exit 2
fi
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d -t restrain-smoke-XXXXXX)}

: "${MODEL_PATH:=$RESTRAIN_SMOKE_MODEL}"
: "${DATA_DIR:=$SMOKE_DIR/data}"
: "${TRAIN_FILE:=$DATA_DIR/amc23.parquet}"
: "${VAL_FILES:=$DATA_DIR/math500.parquet}"
: "${PROJECT:=restrain_smoke}"
: "${EXPERIMENT:=smoke}"
: "${CKPT_DIR:=$SMOKE_DIR/checkpoints}"
: "${LOG_DIR:=$SMOKE_DIR/logs}"
: "${LOGGER:=[\"console\",\"file\"]}"
: "${N_GPUS_PER_NODE:=1}"
: "${ROLLOUT_N:=4}"
: "${TRAIN_BATCH_SIZE:=4}"
: "${PPO_MINI_BATCH_SIZE:=4}"
: "${MAX_PROMPT_LENGTH:=512}"
: "${MAX_RESPONSE_LENGTH:=512}"
: "${GPU_MEMORY_UTILIZATION:=0.4}"
: "${VAL_N:=1}"
: "${TEST_FREQ:=2}"
: "${SAVE_FREQ:=-1}"
: "${TOTAL_EPOCHS:=1}"
# kappa must not exceed the 4 rollouts per prompt.
: "${KAPPA:=2}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The bundled AMC23 (train, 40 prompts) and MATH500 (validation) sets: no download.
run_or_print "$PYTHON" -c 'import sys; from verl_restrain.data.prepare import main; sys.exit(main())' \
    --benchmarks amc23,math500 --source bundled --output-dir "$DATA_DIR"

restrain_train restrain \
    trainer.total_training_steps=2 \
    trainer.val_before_train=False \
    data.val_max_samples=16 \
    "$@"

if [[ "$DRY_RUN" != "1" ]]; then
    "$PYTHON" - "$LOG_DIR/$PROJECT/$EXPERIMENT.jsonl" <<'EOF'
import json, sys
steps = {record["step"]: record["data"] for record in map(json.loads, open(sys.argv[1]))}
last = steps.get(2, {})
restrain = {name: value for name, value in last.items() if name.startswith("restrain/")}
if not restrain:
    sys.exit(f"[smoke] FAILED: no restrain/ metrics at step 2 in {sys.argv[1]}")
for name in sorted(restrain):
    print(f"[smoke] {name} = {restrain[name]:.4g}")
print(f"[smoke] OK: two RESTRAIN steps; metrics in {sys.argv[1]}")
EOF
fi
