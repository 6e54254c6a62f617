#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k, label-free. RESTRAIN (all three components): main table.
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_restrain}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train restrain "$@"
