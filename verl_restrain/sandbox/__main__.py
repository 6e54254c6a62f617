"""``python -m verl_restrain.sandbox``: the same as the ``restrain-sandbox`` console script."""

import sys

from verl_restrain.sandbox.cli import main

sys.exit(main())
