#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k: ReST-EM (Singh et al. 2023, "Beyond Human Data"), the self-training
# baseline. ROUNDS times: Grow (sample SCORE_N responses per training prompt from the current model,
# restrain-score-prompts --samples-output), Improve (keep the correct ones, at most MAX_PER_PROMPT per
# prompt: restrain-filter-samples), fine-tune with verl's own SFT trainer (torchrun -m
# verl.trainer.sft_trainer), then evaluate the round's model (restrain-evaluate, EVALUATE=0 skips it).
#
# As ReST-EM does, every round fine-tunes the BASE model (MODEL_PATH) on the newest round's data
# only; the previous round's model only samples. KEEP=majority is the label-free variant (the
# prompt's majority answer instead of the gold one; its results are labelled rest_em_majority).
#
# Defaults from ReST-EM on MATH: 32 samples per prompt, at most 10 kept per prompt; 3 rounds (our
# reading of its MATH iterations); sampling at temperature 1, top-p 1 (common.sh's scoring
# defaults). The SFT settings are this project's choice for full fine-tuning of a 4B model on one
# 8-GPU node: lr 1e-5 with cosine decay after 3% warmup, 2 epochs, verl's default 256 examples per
# step, sequences up to MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH tokens.
#
# Files: round r's samples and SFT data under REST_EM_DIR/round_<r>/, its checkpoints under
# CKPT_DIR/round_<r>/ with the final model at CKPT_DIR/round_<r>/huggingface, its evaluation at
# RESULTS_DIR/<EXPERIMENT>/round_<r>.json. Extra arguments are Hydra overrides of every SFT run.
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${KEEP:=gold}"
: "${EXPERIMENT:=qwen3_4b_base_rest_em$([[ "$KEEP" == gold ]] || echo "_$KEEP")}"
: "${SCORE_N:=32}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

ROUNDS=${ROUNDS:-3}
MAX_PER_PROMPT=${MAX_PER_PROMPT:-10}
REST_EM_DIR=${REST_EM_DIR:-$DATA_DIR/rest_em/$EXPERIMENT}
RESULTS_DIR=${RESULTS_DIR:-$HOME/results/restrain}
EVALUATE=${EVALUATE:-1}
EVAL_K=${EVAL_K:-16}
LABEL=${LABEL:-rest_em$([[ "$KEEP" == gold ]] || echo "_$KEEP")}

SFT_LR=${SFT_LR:-1e-5}
SFT_WARMUP_RATIO=${SFT_WARMUP_RATIO:-0.03}
SFT_EPOCHS=${SFT_EPOCHS:-2}
SFT_BATCH_SIZE=${SFT_BATCH_SIZE:-256}
SFT_MAX_LENGTH=${SFT_MAX_LENGTH:-$((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH))}
SFT_MAX_TOKEN_LEN_PER_GPU=${SFT_MAX_TOKEN_LEN_PER_GPU:-$((2 * SFT_MAX_LENGTH))}
TORCHRUN_ARGS=${TORCHRUN_ARGS:-"--standalone --nnodes=1 --nproc_per_node=$N_GPUS_PER_NODE"}

if [[ "$KEEP" != gold && "$KEEP" != majority ]]; then
    echo "[recipes] KEEP must be gold or majority, got '$KEEP'" >&2
    exit 1
fi
if [[ "$DRY_RUN" != "1" && ! -e "$TRAIN_FILE" ]]; then
    echo "[recipes] missing $TRAIN_FILE; create it with scripts/prepare_data.py (see README)" >&2
    exit 1
fi

# Fine-tune the base model on one round's SFT file: rest_em_sft ROUND SFT_FILE [HYDRA_OVERRIDE...]
# data.ignore_input_ids_mismatch: verl tokenizes each message alone and checks the concatenation
# against the whole conversation rendered at once. Qwen3's template adds an empty <think></think>
# block to the last assistant turn of a whole conversation, which the sampled responses never had;
# the concatenation is exactly what was sampled (the prompt with its generation prompt, the
# response, the end of turn), so that is what is trained on.
rest_em_sft() {
    local round=$1 sft_file=$2
    shift 2
    # shellcheck disable=SC2086  # TORCHRUN_ARGS is a list of launcher flags
    run_or_print torchrun $TORCHRUN_ARGS -m verl.trainer.sft_trainer \
        "data.train_files=$(hydra_list "$sft_file")" \
        data.messages_key=messages \
        "data.train_batch_size=$SFT_BATCH_SIZE" \
        data.use_dynamic_bsz=True \
        "data.max_token_len_per_gpu=$SFT_MAX_TOKEN_LEN_PER_GPU" \
        "data.max_length=$SFT_MAX_LENGTH" \
        data.truncation=right \
        data.ignore_input_ids_mismatch=True \
        "model.path=$MODEL_PATH" \
        model.use_remove_padding=True \
        model.enable_gradient_checkpointing=True \
        "optim.lr=$SFT_LR" \
        "optim.lr_warmup_steps_ratio=$SFT_WARMUP_RATIO" \
        optim.lr_scheduler_type=cosine \
        "optim.weight_decay=$WEIGHT_DECAY" \
        "checkpoint.save_contents=[model,optimizer,extra,hf_model]" \
        "trainer.default_local_dir=$CKPT_DIR/round_$round" \
        "trainer.project_name=$PROJECT" \
        "trainer.experiment_name=${EXPERIMENT}_round$round" \
        "trainer.logger=$LOGGER" \
        "trainer.total_epochs=$SFT_EPOCHS" \
        "trainer.nnodes=$NNODES" \
        "trainer.n_gpus_per_node=$N_GPUS_PER_NODE" \
        trainer.resume_mode=auto \
        "$@"
}

export VERL_FILE_LOGGER_ROOT=$LOG_DIR
model=$MODEL_PATH
for ((round = 1; round <= ROUNDS; round++)); do
    dir=$REST_EM_DIR/round_$round
    # Grow: the current model's samples (resumable; a finished output is left alone).
    run_or_print restrain-score-prompts \
        --input "$TRAIN_FILE" --output "$dir/scored.parquet" --samples-output "$dir/samples.parquet" \
        --model "$model" --engine "$SCORE_ENGINE" --n "$SCORE_N" --temperature "$SCORE_TEMPERATURE" \
        --top-p "$SCORE_TOP_P" --max-new-tokens "$SCORE_MAX_NEW_TOKENS" --seed "$SCORE_SEED"
    # Improve: the responses to fine-tune on.
    run_or_print restrain-filter-samples \
        --samples "$dir/samples.parquet" --prompts "$dir/scored.parquet" --output "$dir/sft.parquet" \
        --keep "$KEEP" --max-per-prompt "$MAX_PER_PROMPT"
    rest_em_sft "$round" "$dir/sft.parquet" "$@"
    # The last checkpoint's Hugging Face model, at a fixed path for the next round and evaluation.
    run_or_print bash -c 'ln -sfn "global_step_$(cat "$1/latest_checkpointed_iteration.txt")/huggingface" "$1/huggingface"' \
        link_final_model "$CKPT_DIR/round_$round"
    model=$CKPT_DIR/round_$round/huggingface
    if [[ "$EVALUATE" == "1" ]]; then
        label=$LABEL
        if ((round < ROUNDS)); then
            label=${LABEL}_round$round
        fi
        run_or_print restrain-evaluate \
            --model "$model" --data-dir "$DATA_DIR" --engine "$SCORE_ENGINE" --k "$EVAL_K" \
            --output "$RESULTS_DIR/$EXPERIMENT/round_$round.json" --label "$label"
    fi
done
