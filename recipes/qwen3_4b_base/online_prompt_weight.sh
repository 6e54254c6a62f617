#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k, label-free. The paper's Appendix E variant: RESTRAIN with the prompt
# weight u = g(M / n) recomputed every step from the current policy's own vote (no offline scoring).
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_online_prompt_weight}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train online_prompt_weight "$@"
