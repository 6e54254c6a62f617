#!/usr/bin/env python
"""Evaluate a model on the paper's benchmarks: k samples per problem, graded like training.

    python scripts/evaluate.py --model HF_DIR --benchmarks aime24,math500 --data-dir data/ \
        --k 16 --output results/restrain.json --label restrain

A verl FSDP checkpoint is converted to HF_DIR first with verl's merger:
    python -m verl.model_merger merge --backend fsdp --local_dir CKPT/global_step_N/actor --target_dir HF_DIR

See ``verl_restrain.jobs.evaluation`` for the metrics and the output format.
"""

from verl_restrain.jobs.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
