#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k with gold labels: verl's GRPO (the upper reference of the main table).
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_grpo_gold}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
grpo_gold_train "$@"
