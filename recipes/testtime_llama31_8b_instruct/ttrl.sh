#!/usr/bin/env bash
# Test-time RL, ttrl: Llama-3.1-8B-Instruct trained label-free on BENCHMARK (aime24, amc23, math500).
source "$(dirname "${BASH_SOURCE[0]}")/testtime.sh"
: "${EXPERIMENT:=testtime_llama31_8b_instruct_${BENCHMARK}_ttrl}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train ttrl "$@"
