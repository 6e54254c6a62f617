#!/usr/bin/env python
"""Write the paper's training and evaluation sets as verl-format parquet.

    python scripts/prepare_data.py --benchmarks all --output-dir data/
    python scripts/prepare_data.py --benchmarks eval --local-dir my_files/ --output-dir data/

See ``verl_restrain.data.prepare`` for the sources, the row format and the prompt template.
"""

from verl_restrain.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
