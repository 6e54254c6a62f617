#!/usr/bin/env bash
# OctoThinker-8B-Hybrid-Base on DAPO-Math-14k, label-free: restrain.
: "${MODEL_PATH:=OctoThinker/OctoThinker-8B-Hybrid-Base}"
: "${EXPERIMENT:=octothinker_8b_base_restrain}"
: "${ROLLOUT_TP:=2}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train restrain "$@"
