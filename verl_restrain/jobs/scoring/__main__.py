"""``python -m verl_restrain.jobs.scoring``: the same as the ``restrain-score-prompts`` console script."""

import sys

from verl_restrain.jobs.scoring.cli import main

sys.exit(main())
