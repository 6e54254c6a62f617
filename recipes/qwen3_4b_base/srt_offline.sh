#!/usr/bin/env bash
# Qwen3-4B-Base on DAPO-Math-14k, label-free. SRT with the base model's fixed majority answer as label (offline scoring first): main table.
: "${MODEL_PATH:=Qwen/Qwen3-4B-Base}"
: "${EXPERIMENT:=qwen3_4b_base_srt_offline}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train srt_offline "$@"
