#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k, label-free. Ablation: RESTRAIN with uniform pseudo-label weights over the answer clusters.
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_uniform_weighting}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train uniform_weighting "$@"
