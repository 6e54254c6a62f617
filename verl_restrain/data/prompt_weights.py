"""Recompute the prompt weight u_x of a scored parquet for another sigma or center, without sampling.

The offline scoring job (``restrain-score-prompts``) samples the base model once and stores, per
prompt, c_ref (``restrain_ref_majority_count``) and n (``restrain_ref_num_samples``) next to
u_x = g(c_ref / n) (``restrain_prompt_weight``) for the sigma and center it was given. The trainer
reads u_x from that column, so a run with another sigma or center needs the column recomputed with
the same g, g(f) = exp(-(f - center)^2 / (2 sigma^2)) (:func:`verl_restrain.advantage.prompt_weight`).
That costs a pass over the file, not a new sampling run. Every other column and the row order are
kept; the parquet metadata gains a ``verl_restrain.prompt_weights`` record of the new values.

    python -m verl_restrain.data.prompt_weights --input scored.parquet --output scored.sigma0.2.parquet --sigma 0.2
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from verl_restrain import defaults

METADATA_KEY = b"verl_restrain.prompt_weights"


def reweight_prompts(input: str | Path, output: str | Path, *, sigma: float, center: float) -> Path:
    """Write ``input`` to ``output`` with u_x recomputed from c_ref and n for ``sigma``/``center``."""
    from verl_restrain.advantage import prompt_weight

    input, output = Path(input), Path(output)
    if not input.is_file():
        raise FileNotFoundError(f"scored file not found: {input}")
    if input.resolve() == output.resolve():
        raise ValueError("--output must differ from --input; the scored file is never overwritten")
    if sigma <= 0 or not 0 <= center <= 1:
        raise ValueError(f"need sigma > 0 and 0 <= center <= 1, got sigma={sigma}, center={center}")
    table = pq.read_table(input)
    needed = (defaults.REF_MAJORITY_COUNT_COLUMN, defaults.REF_NUM_SAMPLES_COLUMN, defaults.PROMPT_WEIGHT_COLUMN)
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"{input} lacks {missing}; it must be an output of restrain-score-prompts")
    # Copies: arrow hands out read-only buffers, which torch does not accept.
    majority_count = torch.from_numpy(table.column(defaults.REF_MAJORITY_COUNT_COLUMN).to_numpy().copy())  # (P,)
    num_samples = torch.from_numpy(table.column(defaults.REF_NUM_SAMPLES_COLUMN).to_numpy().copy())  # (P,)
    weights = prompt_weight(majority_count, num_samples, sigma, center).numpy()  # (P,)
    index = table.column_names.index(defaults.PROMPT_WEIGHT_COLUMN)
    table = table.set_column(index, defaults.PROMPT_WEIGHT_COLUMN, pa.array(weights, pa.float32()))
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps({"sigma": sigma, "center": center, "source": str(input)}).encode()
    table = table.replace_schema_metadata(metadata)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (``python -m verl_restrain.data.prompt_weights``); returns the exit status."""
    parser = argparse.ArgumentParser(description="Recompute u_x of a scored parquet for another sigma/center.")
    parser.add_argument("--input", required=True, help="output of restrain-score-prompts")
    parser.add_argument("--output", required=True)
    parser.add_argument("--sigma", type=float, default=defaults.SIGMA)
    parser.add_argument("--center", type=float, default=defaults.CENTER)
    args = parser.parse_args(argv)
    try:
        path = reweight_prompts(args.input, args.output, sigma=args.sigma, center=args.center)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"prompt_weights: {exc}") from exc
    print(f"wrote {path} (u_x for sigma={args.sigma}, center={args.center})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
