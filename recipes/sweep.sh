#!/usr/bin/env bash
# Sensitivity sweep of RESTRAIN's sigma, kappa and delta (Qwen3-4B-Base, DAPO-Math-14k).
#
# GRID=axes (default) varies one parameter at a time, the others at the package defaults
# (verl_restrain/defaults.py: sigma 0.4, kappa 4, delta 0.5); GRID=full runs every combination. Each run is
# recipes/qwen3_4b_base/restrain.sh with SIGMA/KAPPA/DELTA set and its own experiment name. The
# base model is sampled once (offline scoring); every run computes u_x = g(c_ref / n) from the
# stored counts with its own sigma. Extra arguments are Hydra overrides passed to every run.
set -euo pipefail
SIGMAS=${SIGMAS:-"0.2 0.4 0.8"}
KAPPAS=${KAPPAS:-"2 4 6"}
DELTAS=${DELTAS:-"0.25 0.5 1.0"}
GRID=${GRID:-axes}
# The fixed values of GRID=axes: the package defaults (verl_restrain/defaults.py) unless set.
read -r package_sigma package_kappa package_delta <<<"$("${PYTHON:-python3}" -c 'from verl_restrain import defaults as d; print(d.SIGMA, d.KAPPA, d.DELTA)')"
DEFAULT_SIGMA=${DEFAULT_SIGMA:-$package_sigma}
DEFAULT_KAPPA=${DEFAULT_KAPPA:-$package_kappa}
DEFAULT_DELTA=${DEFAULT_DELTA:-$package_delta}
RESTRAIN=${RESTRAIN:-"$(dirname "${BASH_SOURCE[0]}")/qwen3_4b_base/restrain.sh"}

runs=()
case "$GRID" in
    axes)
        for s in $SIGMAS; do runs+=("$s $DEFAULT_KAPPA $DEFAULT_DELTA"); done
        for k in $KAPPAS; do runs+=("$DEFAULT_SIGMA $k $DEFAULT_DELTA"); done
        for d in $DELTAS; do runs+=("$DEFAULT_SIGMA $DEFAULT_KAPPA $d"); done
        ;;
    full)
        for s in $SIGMAS; do for k in $KAPPAS; do for d in $DELTAS; do runs+=("$s $k $d"); done; done; done
        ;;
    *)
        echo "[recipes] GRID must be axes or full, got '$GRID'" >&2
        exit 1
        ;;
esac

declare -A seen=()
for run in "${runs[@]}"; do
    [[ -n "${seen[$run]:-}" ]] && continue
    seen[$run]=1
    read -r sigma kappa delta <<<"$run"
    SIGMA=$sigma KAPPA=$kappa DELTA=$delta \
        EXPERIMENT="${EXPERIMENT_PREFIX:-qwen3_4b_base_restrain}_sigma${sigma}_kappa${kappa}_delta${delta}" \
        bash "$RESTRAIN" "$@"
done
