#!/usr/bin/env bash
# OctoThinker-8B-Hybrid-Base on DAPO-Math-14k with gold labels: verl's GRPO.
: "${MODEL_PATH:=OctoThinker/OctoThinker-8B-Hybrid-Base}"
: "${EXPERIMENT:=octothinker_8b_base_grpo_gold}"
: "${ROLLOUT_TP:=2}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
grpo_gold_train "$@"
