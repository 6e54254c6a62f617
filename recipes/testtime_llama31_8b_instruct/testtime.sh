# Test-time RL settings shared by restrain.sh and ttrl.sh in this folder: Llama-3.1-8B-Instruct
# trains label-free on one benchmark's own problems and is validated on the same problems.
# BENCHMARK is aime24, amc23 or math500 (prepared by scripts/prepare_data.py into $DATA_DIR).
#
# Defaults follow TTRL's test-time scripts (github.com/PRIME-RL/TTRL, verl/examples/ttrl/aime.sh and
# amc.sh): 8 prompts per step, lr 5e-7, 3k response tokens, validation with 16 samples at
# temperature 0.6 / top-p 0.95 every 2 steps, 80 epochs on AIME and 30 on AMC; 10 epochs on MATH500
# is this project's choice. TTRL's mini-batch of one prompt is kept; TTRL votes over 64 rollouts
# and trains on 32, here the paper's 16 rollouts serve both.
: "${BENCHMARK:=aime24}"
case "$BENCHMARK" in
    aime24) : "${TOTAL_EPOCHS:=80}" ;;
    amc23) : "${TOTAL_EPOCHS:=30}" ;;
    math500) : "${TOTAL_EPOCHS:=10}" ;;
    *)
        echo "[recipes] BENCHMARK must be aime24, amc23 or math500, got '$BENCHMARK'" >&2
        exit 1
        ;;
esac
: "${MODEL_PATH:=meta-llama/Llama-3.1-8B-Instruct}"
: "${DATA_DIR:=$HOME/data/restrain}"
: "${TRAIN_FILE:=$DATA_DIR/$BENCHMARK.parquet}"
: "${VAL_FILES:=$DATA_DIR/$BENCHMARK.parquet}"
: "${TRAIN_BATCH_SIZE:=8}"
: "${PPO_MINI_BATCH_SIZE:=1}"
: "${MAX_RESPONSE_LENGTH:=3072}"
: "${LR:=5e-7}"
: "${LR_WARMUP_STEPS:=0}"
: "${VAL_N:=16}"
: "${TEST_FREQ:=2}"
: "${SAVE_FREQ:=-1}"
: "${ROLLOUT_TP:=2}"
: "${PROJECT:=restrain_testtime}"
