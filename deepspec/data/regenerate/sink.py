"""Where a run's results go: :class:`Sink` (the output and error files, the summary, the progress bar),
and :class:`Work` (the conversations still to do, as a backend's ``drive`` receives them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from deepspec.data.regenerate.common import (
    ConversationJob,
    JsonlAppender,
    RegenerationSummary,
    TurnResult,
    count_lines,
    iter_jobs,
)
from deepspec.data.regenerate.identity import RECORD_KEY


@dataclass(frozen=True, kw_only=True)
class Work:
    """The conversations a backend generates: ``jobs`` in file order, and what they were drawn from."""

    input_files: list[Path]  # listed before anything was written
    done_ids: set  # ids already in the output (resume): skipped
    num_samples: int | None
    jobs: Iterator[ConversationJob]


class Sink:
    """Takes every finished row, failure and skip: writes the files, counts them, moves the bar.

    Rows and failures are written on the calling thread, one flushed line each. The files open at
    their first line (a run that writes nothing creates nothing); :meth:`close` closes them and the bar.
    """

    def __init__(self, *, output_path: Path, error_path: Path, record: dict, total: int, desc: str, progress: bool):
        from tqdm.auto import tqdm

        self.record = record  # which model wrote the rows: --resume checks it
        self.summary = RegenerationSummary()
        self.out = JsonlAppender(output_path)
        self.err = JsonlAppender(error_path, truncate=True)  # failures of this run only: earlier ones are retried
        self.bar = tqdm(total=total, desc=desc, unit="conv", disable=not progress, dynamic_ncols=True)

    def work(self, input_files: list[Path], *, num_samples: int | None, done_ids: set) -> Work:
        """The conversations of ``input_files`` still to do; bad lines and skips are reported here as they are read."""
        jobs = iter_jobs(input_files, num_samples=num_samples, done_ids=done_ids, on_bad=self.bad, on_skip=self.skip)
        return Work(input_files=input_files, done_ids=done_ids, num_samples=num_samples, jobs=self._counted(jobs))

    def _counted(self, jobs: Iterator[ConversationJob]) -> Iterator[ConversationJob]:
        for job in jobs:
            self.summary.attempted += 1
            yield job

    # -- what the backends report
    def row(self, row: dict) -> None:
        row[RECORD_KEY] = self.record
        self.out.write(row)
        self.summary.ok += 1
        self.summary.finish_reasons.update(r or "unknown" for r in row.get("finish_reasons", []))
        self.bar.update(1)

    def done(self, job: ConversationJob) -> None:
        self.row(job.row())

    def fail(self, job: ConversationJob, result: TurnResult) -> None:
        self.failed_turn(job.id, job.turn, result.reason, result.error)

    def failed_turn(self, conv_id: str, turn: int, reason: str, message: str | None) -> None:
        self.bad(conv_id, "", reason, f"assistant turn {turn}: {message}")

    # -- what reading the input reports
    def bad(self, conv_id: str | None, where: str, reason: str, message: str) -> None:
        row = {"id": conv_id, "reason": reason, "message": message}
        if where:
            row["where"] = where
        self.err.write(row)
        self.summary.failed += 1
        self.summary.failure_reasons[reason] += 1
        self.bar.update(1)

    def skip(self, _conv_id: str) -> None:
        self.summary.skipped += 1
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self.out.close()
        self.err.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_total(input_files: list[Path], num_samples: int | None) -> int:
    """The progress bar's total: the input's lines (known at once, without parsing), at most ``num_samples``."""
    total = count_lines(input_files)
    return total if num_samples is None else min(total, num_samples)
