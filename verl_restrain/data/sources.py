"""Where benchmark records come from: the Hugging Face hub, local files, or the bundled copies.

A *record* is one item of a source data set as a plain ``dict`` (field names as the source spells
them); turning records into :class:`~verl_restrain.data.rows.Problem` is the builders' job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class HubSource:
    """A split of a Hugging Face hub data set: ``load_dataset(path, name, split=split)``."""

    path: str
    name: str | None
    split: str

    def describe(self) -> str:
        return f"hf://{self.path}" + (f" ({self.name})" if self.name else "") + f" [{self.split}]"

    @classmethod
    def parse(cls, spec: str) -> HubSource:
        """Parse ``REPO[:CONFIG[:SPLIT]]`` (CONFIG may be empty; SPLIT defaults to ``train``)."""
        parts = spec.split(":")
        if not parts[0] or len(parts) > 3:
            raise ValueError(f"hub data set {spec!r} is not of the form REPO[:CONFIG[:SPLIT]]")
        name = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else "train"
        return cls(parts[0], name, split)


def plain(value: Any) -> Any:
    """Convert numpy scalars/arrays (as pandas returns them from parquet) to Python values."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class RecordsFileError(ValueError):
    """A local data file that cannot be read; the message names the file."""


def read_records_file(path: Path) -> list[dict]:
    """Records of one local file: parquet, JSON lines, a JSON list (or ``{"data": [...]}``), or CSV.

    JSON and CSV are read as text so that answers such as ``"025"`` keep their spelling. A file
    that cannot be read or parsed raises :class:`RecordsFileError` naming it (and the line for JSON lines).
    """
    try:
        return _read_records(path)
    except RecordsFileError:
        raise
    except (OSError, ValueError) as error:
        raise RecordsFileError(f"{path}: cannot be read ({error})") from error


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        return [plain(r) for r in pd.read_parquet(path).to_dict("records")]
    if suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    records.append(_json(line, f"{path}:{number}"))
        return records
    if suffix == ".json":
        data = _json(path.read_text(encoding="utf-8"), str(path))
        if isinstance(data, Mapping) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise RecordsFileError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        return data
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    raise RecordsFileError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordsFileError(f"{where}: not valid JSON ({error})") from None


def find_local_files(local_dir: str | Path, name: str) -> list[Path]:
    """The files holding benchmark ``name`` under ``local_dir``.

    Either one file ``<local_dir>/<name>.<ext>`` or a folder ``<local_dir>/<name>/`` whose data files
    are read in sorted order. Returns ``[]`` when neither exists.
    """
    local_dir = Path(local_dir)
    candidates = [local_dir / f"{name}{suffix}" for suffix in LOCAL_SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    if len(found) > 1:
        raise ValueError(f"several files for {name!r} in {local_dir}: {[p.name for p in found]}; keep one")
    if found:
        return found
    folder = local_dir / name
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
    return []


def read_local(local_dir: str | Path, name: str) -> tuple[list[dict], str]:
    """Records of benchmark ``name`` from ``local_dir`` and a description of the files read."""
    files = find_local_files(local_dir, name)
    if not files:
        raise FileNotFoundError(
            f"no local data for {name!r}: expected {Path(local_dir) / name}.<{'|'.join(s[1:] for s in LOCAL_SUFFIXES)}>"
            f" or a folder {Path(local_dir) / name}/ with such files"
        )
    records: list[dict] = []
    for path in files:
        records.extend(read_records_file(path))
    return records, ", ".join(str(p) for p in files)


def _bundled_root():
    return resources.files("verl_restrain.data") / "bundled"


def bundled_names() -> list[str]:
    """Names of the benchmarks shipped inside the package."""
    root = _bundled_root()
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def read_bundled(name: str) -> tuple[list[dict], str]:
    """Records of the bundled copy of ``name`` (see ``bundled/SOURCES.md`` for their origin)."""
    resource = _bundled_root() / f"{name}.jsonl"
    if not resource.is_file():
        raise FileNotFoundError(f"no bundled copy of {name!r}; bundled: {', '.join(bundled_names())}")
    text = resource.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()], f"bundled:{name}.jsonl"


def read_hub(sources: tuple[HubSource, ...]) -> Iterator[tuple[HubSource, dict]]:
    """Records of hub data sets, each with the source it came from. Needs network access."""
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError("loading from the hub needs the `datasets` package: pip install datasets") from exc
    for source in sources:
        try:
            data = datasets.load_dataset(source.path, source.name, split=source.split)
        except Exception as exc:
            raise RuntimeError(
                f"could not load {source.describe()} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                "Without network access pass --local-dir with the files instead; gated data sets "
                "(GPQA) need their terms accepted on the hub and `huggingface-cli login`."
            ) from exc
        for record in data:
            yield source, dict(record)
