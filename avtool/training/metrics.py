"""The training log `metrics.jsonl`: one JSON object per step, appended and flushed as training goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from avtool.media.files import atomic_output

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The logged records in order; a line cut short by a kill is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to `run_dir/metrics.jsonl`.

    A fresh run starts the file empty; a resumed one first drops the records after the step it resumes from,
    which the interrupted run logged but the checkpoint does not hold, so each step appears once.
    """

    def __init__(self, run_dir: Path, resumed_step: int | None) -> None:
        path = Path(run_dir) / METRICS_FILE
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resumed_step] if resumed_step is not None else []
        with atomic_output(path) as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
        self._file: TextIO = open(path, "a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
