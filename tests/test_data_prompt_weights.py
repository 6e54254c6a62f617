"""Recomputing u_x of a scored file for another sigma/center (the sweep's cheap step)."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_restrain import defaults
from verl_restrain.data.prompt_weights import METADATA_KEY, main, reweight_prompts


def scored_table() -> pa.Table:
    # What restrain-score-prompts writes (the columns this step reads, plus one kept column).
    return pa.table(
        {
            "prompt": ["p0", "p1", "p2"],
            defaults.PROMPT_WEIGHT_COLUMN: pa.array([1.0, 0.5, 0.1], pa.float32()),
            defaults.REF_MAJORITY_COUNT_COLUMN: pa.array([16, 8, 0], pa.int64()),
            defaults.REF_NUM_SAMPLES_COLUMN: pa.array([16, 16, 16], pa.int64()),
        }
    )


def test_reweight_recomputes_only_the_prompt_weight(tmp_path):
    src = tmp_path / "scored.parquet"
    pq.write_table(scored_table(), src)
    out = reweight_prompts(src, tmp_path / "out.parquet", sigma=0.2, center=1.0)
    table = pq.read_table(out)
    # u = exp(-(c/n - 1)^2 / (2 * 0.2^2)): f = 1 -> 1; f = 0.5 -> exp(-0.25/0.08); f = 0 -> exp(-1/0.08)
    expected = [1.0, math.exp(-0.25 / 0.08), math.exp(-1 / 0.08)]
    assert table.column(defaults.PROMPT_WEIGHT_COLUMN).to_pylist() == pytest.approx(expected, rel=1e-6)
    assert table.column(defaults.PROMPT_WEIGHT_COLUMN).type == pa.float32()
    assert table.column_names == scored_table().column_names
    assert table.column("prompt").to_pylist() == ["p0", "p1", "p2"]
    assert b'"sigma": 0.2' in table.schema.metadata[METADATA_KEY]
    # Default sigma/center reproduce the scoring job's own u_x = g(c/n) with the package defaults.
    same = pq.read_table(reweight_prompts(src, tmp_path / "same.parquet", sigma=defaults.SIGMA, center=defaults.CENTER))
    f = [1.0, 0.5, 0.0]
    assert same.column(defaults.PROMPT_WEIGHT_COLUMN).to_pylist() == pytest.approx(
        [math.exp(-((x - 1) ** 2) / (2 * defaults.SIGMA**2)) for x in f], rel=1e-6
    )


def test_reweight_errors(tmp_path):
    src = tmp_path / "scored.parquet"
    pq.write_table(scored_table().drop([defaults.REF_MAJORITY_COUNT_COLUMN]), src)
    with pytest.raises(SystemExit, match="must be an output of restrain-score-prompts"):
        main(["--input", str(src), "--output", str(tmp_path / "o.parquet")])
    with pytest.raises(SystemExit, match="must differ"):
        main(["--input", str(src), "--output", str(src)])
    with pytest.raises(SystemExit, match="not found"):
        main(["--input", str(tmp_path / "none.parquet"), "--output", str(tmp_path / "o.parquet")])
    with pytest.raises(SystemExit, match="sigma > 0"):
        main(["--input", str(src), "--output", str(tmp_path / "o.parquet"), "--sigma", "0"])
