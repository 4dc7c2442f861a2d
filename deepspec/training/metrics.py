"""Metrics sinks (rank 0 only): ``<checkpoint_dir>/metrics.jsonl``, TensorBoard, and a tqdm bar."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tqdm.auto import tqdm

METRICS_NAME = "metrics.jsonl"


def truncate_metrics(path: Path, *, after_step: int) -> None:
    """Drop lines past ``after_step`` (written by a run that crashed after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= after_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Writes one JSON line per logging step; a no-op object on ranks other than 0."""

    def __init__(
        self,
        *,
        checkpoint_dir: str,
        tensorboard_dir: str | None,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.path = Path(checkpoint_dir) / METRICS_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, after_step=start_step)
        self.file = open(self.path, "a")
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tensorboard_dir, purge_step=start_step + 1)
        self.shares: dict[str, str] = {}
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def step(self, n: int = 1, *, loss: float | None = None, lr: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", **self.shares)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        # The last window's shares of wall time, shown on the bar: waiting for data, and (online) the target.
        self.shares = {
            name: f"{record[key]:.0%}"
            for name, key in (("wait", "data_wait_fraction"), ("target", "target_forward_fraction"))
            if isinstance(record.get(key), (int, float))
        }
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
