"""Offline prompt weights for RESTRAIN; same as the ``restrain-score-prompts`` console script.

    python scripts/score_prompts.py --input train.parquet --output train.scored.parquet --model <base model>
    python scripts/score_prompts.py merge --output train.scored.parquet train.scored.shard-*.parquet
"""

import sys

from verl_restrain.jobs.scoring.cli import main

if __name__ == "__main__":
    sys.exit(main())
