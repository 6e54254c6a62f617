#!/usr/bin/env bash
# Test-time RL, ettrl: Llama-3.1-8B-Instruct trained label-free on BENCHMARK (aime24, amc23, math500)
# with ETTRL: entropy-fork tree rollouts and entropy-based advantage reshaping on TTRL's majority vote.
# A tree is one sampled response plus B = 2 branches at each of its N = 2 highest-entropy tokens:
# 5 leaves. ROLLOUT_N=15 (3 trees) keeps the rollout budget of the other methods here (16);
# ROLLOUT_N=60 (12 trees) is ETTRL's own setting.
: "${ROLLOUT_N:=15}"
source "$(dirname "${BASH_SOURCE[0]}")/testtime.sh"
: "${EXPERIMENT:=testtime_llama31_8b_instruct_${BENCHMARK}_ettrl}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
restrain_train ettrl "$@"
