# Shared settings and launch functions of every experiment script in recipes/.
#
# Experiment scripts set their own defaults with `: "${VAR:=value}"` BEFORE sourcing this file, so
# the precedence is: environment > experiment script > this file. Every value below can be
# overridden from the environment, and any Hydra override can be appended to a script's command
# line (scripts forward "$@" to verl).
#
# DRY_RUN=1 prints each command (one per line, shell-quoted) instead of running it; the recipe test
# composes the printed overrides against verl's Hydra config.
#
# Where the defaults come from (the paper does not publish its training hyperparameters):
#   - n = 16 rollouts per prompt and the data sets: the paper.
#   - lr 1e-6, KL loss 0.001 (low_var_kl), clip ratio 0.2, entropy coefficient 0, token-mean loss:
#     verl's GRPO examples (examples/grpo_trainer) and verl-recipe's DAPO scripts (lr, loss mode).
#   - 1024 prompt / 8192 response tokens, 128 prompts per step, 32 per PPO mini-batch, dynamic batch
#     size: this project's choice for a 4B-8B model on one 8-GPU node, in the style of verl-recipe's
#     DAPO scripts (which use longer responses and larger batches for 32B models).
#   - Validation: 4 samples per problem at temperature 0.6, top-p 0.95 (TTRL's validation setting);
#     the final numbers come from scripts/evaluate.py with k = 16.

set -euo pipefail

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

# ---- paths
DATA_DIR=${DATA_DIR:-$HOME/data/restrain}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-4B-Base}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/dapo_math_14k.parquet}
# Space-separated parquet files validated during training (the paper's six benchmarks).
VAL_FILES=${VAL_FILES:-"$DATA_DIR/math500.parquet $DATA_DIR/aime24.parquet $DATA_DIR/aime25.parquet $DATA_DIR/amc23.parquet $DATA_DIR/gpqa_diamond.parquet $DATA_DIR/mmlu_stem.parquet"}
PROJECT=${PROJECT:-restrain}
EXPERIMENT=${EXPERIMENT:-restrain}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/$PROJECT/$EXPERIMENT}
# verl's `file` logger writes $LOG_DIR/$PROJECT/$EXPERIMENT.jsonl (read by scripts/make_tables.py).
LOG_DIR=${LOG_DIR:-$HOME/logs/restrain}
LOGGER=${LOGGER:-'["console","file"]'}

# ---- cluster
NNODES=${NNODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
ROLLOUT_TP=${ROLLOUT_TP:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
PARAM_OFFLOAD=${PARAM_OFFLOAD:-False}

# ---- rollouts and batches
ROLLOUT_N=${ROLLOUT_N:-16}
ROLLOUT_TEMPERATURE=${ROLLOUT_TEMPERATURE:-1.0}
ROLLOUT_TOP_P=${ROLLOUT_TOP_P:-1.0}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-128}
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-32}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-1024}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-8192}
PPO_MAX_TOKEN_LEN_PER_GPU=${PPO_MAX_TOKEN_LEN_PER_GPU:-$(((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH) * 2))}

# ---- optimisation
LR=${LR:-1e-6}
LR_WARMUP_STEPS=${LR_WARMUP_STEPS:-10}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}
USE_KL_LOSS=${USE_KL_LOSS:-True}
KL_LOSS_COEF=${KL_LOSS_COEF:-0.001}
CLIP_RATIO_LOW=${CLIP_RATIO_LOW:-0.2}
CLIP_RATIO_HIGH=${CLIP_RATIO_HIGH:-0.2}
ENTROPY_COEFF=${ENTROPY_COEFF:-0}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-3}

# ---- validation and checkpoints
VAL_N=${VAL_N:-4}
VAL_TEMPERATURE=${VAL_TEMPERATURE:-0.6}
VAL_TOP_P=${VAL_TOP_P:-0.95}
TEST_FREQ=${TEST_FREQ:-10}
SAVE_FREQ=${SAVE_FREQ:-50}

# ---- RESTRAIN (empty = the defaults of verl_restrain/defaults.py, as in the Hydra config)
SIGMA=${SIGMA:-}
CENTER=${CENTER:-}
KAPPA=${KAPPA:-}
DELTA=${DELTA:-}
# TTRL's vote/train split: vote on ROLLOUT_N rollouts per prompt, train on the first TRAIN_ROLLOUTS
# (e.g. ROLLOUT_N=64 TRAIN_ROLLOUTS=32 as TTRL); empty trains on all of them.
TRAIN_ROLLOUTS=${TRAIN_ROLLOUTS:-}

# ---- offline scoring (u_x and the SRT-offline label), with the base model
SCORE_N=${SCORE_N:-$ROLLOUT_N}
SCORE_TEMPERATURE=${SCORE_TEMPERATURE:-$ROLLOUT_TEMPERATURE}
SCORE_TOP_P=${SCORE_TOP_P:-$ROLLOUT_TOP_P}
SCORE_MAX_NEW_TOKENS=${SCORE_MAX_NEW_TOKENS:-$MAX_RESPONSE_LENGTH}
SCORE_SEED=${SCORE_SEED:-42}
SCORE_ENGINE=${SCORE_ENGINE:-auto}

RESTRAIN_CONFIG_DIR=${RESTRAIN_CONFIG_DIR:-$("$PYTHON" -c 'import os, verl_restrain; print(os.path.join(os.path.dirname(verl_restrain.__file__), "config"))')}

# Print (DRY_RUN=1) or run a command.
run_or_print() {
    if [[ "$DRY_RUN" == "1" ]]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
    else
        "$@"
    fi
}

# A Hydra list of quoted paths from a space-separated string: ['a.parquet','b.parquet'].
hydra_list() {
    local items=() item
    for item in $1; do
        items+=("'$item'")
    done
    local IFS=,
    echo "[${items[*]}]"
}

# A file name tag for a model path: Qwen/Qwen3-4B-Base -> Qwen3-4B-Base.
model_tag() {
    basename "${1%/}"
}

# "<uses u_x> <uses the offline label>" (0/1 each) for METHOD, a key of verl_restrain.methods.METHODS.
method_inputs() {
    "$PYTHON" -c 'import sys; from verl_restrain.methods import get_method; m = get_method(sys.argv[1]); print(int(m.use_prompt_weight and m.prompt_weight_source == "offline"), int(m.label_mode == "offline"))' "$1"
}

# Score IN with the base model into OUT (c_ref and n, the base model's majority answer), unless OUT
# already exists: the scoring is done once per (data set, base model) and reused by every method.
score_prompts() {
    local input=$1 output=$2
    if [[ -e "$output" ]]; then
        echo "[recipes] scored prompts exist, skipping scoring: $output" >&2
        return 0
    fi
    if [[ "$DRY_RUN" != "1" && ! -e "$input" ]]; then
        echo "[recipes] missing $input; create it with scripts/prepare_data.py (see README)" >&2
        exit 1
    fi
    run_or_print restrain-score-prompts \
        --input "$input" --output "$output" --model "$MODEL_PATH" --engine "$SCORE_ENGINE" \
        --n "$SCORE_N" --temperature "$SCORE_TEMPERATURE" --top-p "$SCORE_TOP_P" \
        --max-new-tokens "$SCORE_MAX_NEW_TOKENS" --seed "$SCORE_SEED"
}

# Hydra overrides shared by every training run.
common_overrides() {
    COMMON_OVERRIDES=(
        "data.val_files=$(hydra_list "$VAL_FILES")"
        data.prompt_key=prompt
        "data.max_prompt_length=$MAX_PROMPT_LENGTH"
        "data.max_response_length=$MAX_RESPONSE_LENGTH"
        "data.train_batch_size=$TRAIN_BATCH_SIZE"
        data.filter_overlong_prompts=True
        data.truncation=error
        "actor_rollout_ref.model.path=$MODEL_PATH"
        actor_rollout_ref.model.use_remove_padding=True
        actor_rollout_ref.model.enable_gradient_checkpointing=True
        "actor_rollout_ref.actor.optim.lr=$LR"
        "actor_rollout_ref.actor.optim.lr_warmup_steps=$LR_WARMUP_STEPS"
        "actor_rollout_ref.actor.optim.weight_decay=$WEIGHT_DECAY"
        "actor_rollout_ref.actor.ppo_mini_batch_size=$PPO_MINI_BATCH_SIZE"
        actor_rollout_ref.actor.use_dynamic_bsz=True
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$PPO_MAX_TOKEN_LEN_PER_GPU"
        "actor_rollout_ref.actor.use_kl_loss=$USE_KL_LOSS"
        "actor_rollout_ref.actor.kl_loss_coef=$KL_LOSS_COEF"
        actor_rollout_ref.actor.kl_loss_type=low_var_kl
        "actor_rollout_ref.actor.clip_ratio_low=$CLIP_RATIO_LOW"
        "actor_rollout_ref.actor.clip_ratio_high=$CLIP_RATIO_HIGH"
        "actor_rollout_ref.actor.entropy_coeff=$ENTROPY_COEFF"
        actor_rollout_ref.actor.loss_agg_mode=token-mean
        "actor_rollout_ref.actor.fsdp_config.param_offload=$PARAM_OFFLOAD"
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=$PARAM_OFFLOAD"
        actor_rollout_ref.ref.fsdp_config.param_offload=True
        actor_rollout_ref.rollout.name=vllm
        "actor_rollout_ref.rollout.n=$ROLLOUT_N"
        "actor_rollout_ref.rollout.temperature=$ROLLOUT_TEMPERATURE"
        "actor_rollout_ref.rollout.top_p=$ROLLOUT_TOP_P"
        "actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP"
        "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_MEMORY_UTILIZATION"
        "actor_rollout_ref.rollout.max_num_batched_tokens=$((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH))"
        actor_rollout_ref.rollout.val_kwargs.do_sample=True
        "actor_rollout_ref.rollout.val_kwargs.n=$VAL_N"
        "actor_rollout_ref.rollout.val_kwargs.temperature=$VAL_TEMPERATURE"
        "actor_rollout_ref.rollout.val_kwargs.top_p=$VAL_TOP_P"
        algorithm.use_kl_in_reward=False
        "trainer.logger=$LOGGER"
        "trainer.project_name=$PROJECT"
        "trainer.experiment_name=$EXPERIMENT"
        "trainer.nnodes=$NNODES"
        "trainer.n_gpus_per_node=$N_GPUS_PER_NODE"
        trainer.val_before_train=True
        "trainer.test_freq=$TEST_FREQ"
        "trainer.save_freq=$SAVE_FREQ"
        "trainer.total_epochs=$TOTAL_EPOCHS"
        "trainer.default_local_dir=$CKPT_DIR"
        trainer.resume_mode=auto
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_ROOT=$LOG_DIR"
        "+ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR=$LOG_DIR/tensorboard/$PROJECT/$EXPERIMENT"
    )
}

# Train label-free with a RESTRAIN preset: restrain_train METHOD [HYDRA_OVERRIDE...]
# METHOD is a key of verl_restrain.methods.METHODS (restrain, ttrl, srt_offline, the ablations...).
restrain_train() {
    local method=$1
    shift
    local train_file=$TRAIN_FILE uses_prompt_weight uses_offline_label
    read -r uses_prompt_weight uses_offline_label <<<"$(method_inputs "$method")"
    if [[ "$uses_prompt_weight" == "1" || "$uses_offline_label" == "1" ]]; then
        local scored=${SCORED_TRAIN_FILE:-${TRAIN_FILE%.parquet}.scored.$(model_tag "$MODEL_PATH").parquet}
        score_prompts "$TRAIN_FILE" "$scored"
        train_file=$scored
    fi
    local restrain_overrides=() field name value
    for field in sigma center kappa delta train_rollouts; do
        name=${field^^}
        value=${!name}
        if [[ -n "$value" ]]; then
            restrain_overrides+=("algorithm.restrain.$field=$value")
        fi
    done
    common_overrides
    export VERL_FILE_LOGGER_ROOT=$LOG_DIR
    run_or_print "$PYTHON" -m verl.trainer.main_ppo \
        --config-path "$RESTRAIN_CONFIG_DIR" --config-name restrain_trainer \
        "data.train_files=$(hydra_list "$train_file")" \
        "${COMMON_OVERRIDES[@]}" \
        algorithm.adv_estimator=restrain \
        reward.reward_manager.name=restrain \
        trainer.v1.trainer_mode=restrain \
        "restrain_method=$method" \
        ${restrain_overrides[@]+"${restrain_overrides[@]}"} \
        "$@"
}

# Train with gold labels: verl's own GRPO and a rule reward on reward_model.ground_truth, graded
# by this package's answer checker. grpo_gold_train [HYDRA_OVERRIDE...]
grpo_gold_train() {
    local reward_file
    reward_file=$("$PYTHON" -c 'import verl_restrain.adapters.reward_score as m; print(m.__file__)')
    common_overrides
    export VERL_FILE_LOGGER_ROOT=$LOG_DIR
    run_or_print "$PYTHON" -m verl.trainer.main_ppo \
        "data.train_files=$(hydra_list "$TRAIN_FILE")" \
        "${COMMON_OVERRIDES[@]}" \
        algorithm.adv_estimator=grpo \
        reward.reward_manager.name=naive \
        "reward.custom_reward_function.path=$reward_file" \
        reward.custom_reward_function.name=compute_score \
        "$@"
}
