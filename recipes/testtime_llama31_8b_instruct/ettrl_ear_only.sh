#!/usr/bin/env bash
# Test-time RL, ettrl_ear_only: Llama-3.1-8B-Instruct trained label-free on BENCHMARK (aime24, amc23,
# math500) with ETTRL's entropy-based advantage reshaping on TTRL's independent rollouts (no trees).
source "$(dirname "${BASH_SOURCE[0]}")/testtime.sh"
: "${EXPERIMENT:=testtime_llama31_8b_instruct_${BENCHMARK}_ettrl_ear_only}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train ettrl_ear_only "$@"
