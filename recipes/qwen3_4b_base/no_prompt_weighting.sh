#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k, label-free. Ablation: RESTRAIN without the prompt weight u_x.
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_no_prompt_weighting}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train no_prompt_weighting "$@"
