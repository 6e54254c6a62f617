#!/usr/bin/env python
"""Build the paper's main and ablation tables from evaluation results, and plot training curves.

    python scripts/make_tables.py results/*.json --output tables.md \
        --curve restrain=logs/restrain/qwen3_4b_base_restrain.jsonl --curve ttrl=logs/ttrl/... \
        --curves-png training_curves.png

See ``verl_restrain.jobs.tables`` for the table layout and the log formats read.
"""

from verl_restrain.jobs.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
