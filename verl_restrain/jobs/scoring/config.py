"""Settings of one offline scoring run; ``restrain-score-prompts`` is generated from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from verl_restrain import defaults
from verl_restrain.jobs.config import JobInputError, SamplingConfig
from verl_restrain.jobs.scoring.io import plan_shard

__all__ = ["ScoringConfig", "ScoringInputError"]

# The scoring job's errors are the sampling jobs' input errors.
ScoringInputError = JobInputError

FILES = "files"
RUNS = "resuming and shards"


@dataclass(kw_only=True)
class ScoringConfig(SamplingConfig):
    """Settings of one scoring run (one shard when ``num_shards > 1``)."""

    input: str = field(metadata={"help": "verl-format parquet file (never modified)", "group": FILES})
    output: str = field(metadata={"help": "scored parquet file, written atomically once complete", "group": FILES})
    samples_output: str | None = field(
        default=None,
        metadata={"help": "also write every sampled response, its answer and cluster id here", "group": FILES},
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "checkpoint directory (default: <output>.parts)", "group": FILES}
    )
    prompt_key: str = field(
        default="prompt", metadata={"help": "column with the chat messages (verl's data.prompt_key)", "group": FILES}
    )
    n: int = field(default=defaults.NUM_ROLLOUTS, metadata={"help": "samples per prompt", "group": "sampling"})
    resume: bool = field(
        default=True,
        metadata={
            "group": RUNS,
            "help": "reuse the batches checkpointed in the work directory by an earlier run with the same settings, "
            "and leave a finished output with these settings and this input alone (the default)",
            "negative_help": "discard checkpoints and any finished output; start over",
        },
    )
    keep_parts: bool = field(default=False, metadata={"help": "keep the checkpoint directory after success", "group": RUNS})
    num_shards: int = field(default=1, metadata={"help": "split the input into this many shards", "group": RUNS})
    shard_index: int = field(default=0, metadata={"help": "the shard this run scores, in [0, --num-shards)", "group": RUNS})

    def validate(self) -> None:
        self.at_least("n", 1)
        super().validate()
        plan_shard(0, 1, self.num_shards, self.shard_index)
        paths = {"--input": self.input, "--output": self.output, "--samples-output": self.samples_output}
        paths["--work-dir"] = str(self.parts_dir)
        resolved = [(name, Path(path).resolve()) for name, path in paths.items() if path]
        for i, (first, first_path) in enumerate(resolved):
            for second, second_path in resolved[i + 1 :]:
                if first_path == second_path:
                    raise JobInputError(
                        f"{second} must differ from {first} ({first_path}); the input is never overwritten"
                    )

    @property
    def parts_dir(self) -> Path:
        """The checkpoint directory: ``work_dir``, or ``<output>.parts``."""
        return Path(self.work_dir) if self.work_dir else Path(f"{self.output}.parts")
