"""The top level: :func:`regenerate` checks a run, opens its backend and drives it over the input file."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

from deepspec.data.conversations import DataError, list_input_files
from deepspec.data.regenerate.backends import backend_for
from deepspec.data.regenerate.common import (
    Log,
    OutputExistsError,
    OutputScan,
    RegenerationError,
    RegenerationSummary,
    check_error_file,
    clear_stale_errors,
    repair_tail,
    scan_output,
)
from deepspec.data.regenerate.identity import ModelIdentity, check_resume_model
from deepspec.data.regenerate.options import RegenerateOptions
from deepspec.data.regenerate.sink import Sink, progress_total
from deepspec.errors import check_outputs_apart
from deepspec.hub import spelled_as_path


def regenerate(options: RegenerateOptions, *, log: Log = print) -> RegenerationSummary:
    """Regenerate every assistant turn of ``options.input_path`` into ``options.output_path``.

    See the package docstring. The settings and the files are checked before anything is loaded or
    written; the engine opens (and may fail: no server, a model that does not load) before any file changes.
    """
    t0 = time.perf_counter()
    backend = backend_for(options)
    backend.check(options)
    input_files = check_files(options)
    scan = scan_output(options.output_path) if options.resume else OutputScan()
    identity = backend.identity(options)
    if identity is not None:  # before the engine loads: refusing takes a moment, not a model load
        check_resume(options, scan=scan, identity=identity, log=log)
    # The engine comes next: it can fail (bad model path, no server) before any file is touched.
    with closing(backend.open(options, log=log)) as engine:
        if identity is None:  # a server: the model is the one it names
            identity = backend.identity(options, engine=engine)
            check_resume(options, scan=scan, identity=identity, log=log)
        done_ids = start_output(options, scan=scan, log=log)
        with Sink(
            output_path=options.output_path,
            error_path=options.error_path,
            record=identity.record(),
            total=progress_total(input_files, options.num_samples),
            desc=f"regenerate ({backend.name})",
            progress=options.progress,
        ) as sink:
            work = sink.work(input_files, num_samples=options.num_samples, done_ids=done_ids)
            backend.drive(engine, work=work, sink=sink, options=options, log=log)
    sink.summary.seconds = time.perf_counter() - t0
    return sink.summary


def check_files(options: RegenerateOptions) -> list[Path]:
    """Check the input, the output and its error file (and a local model folder); return the input files.

    Every path written is checked against every path read before anything is opened: an output or error
    file that is an input, or sits in an input folder, would destroy it or be read back.
    """
    input_path, output_path, err_path = options.input_path, options.output_path, options.error_path
    if options.resume and options.overwrite:
        raise RegenerationError(
            "--resume keeps the rows already in the output and --overwrite drops them; pass only one of them"
        )
    if not input_path.exists():
        raise DataError(
            f"input file not found: {input_path} (make one with scripts/data/download_and_split.py)",
            reason="missing_file",
        )
    model_dir = Path(options.model).expanduser() if options.model else None
    if options.model and spelled_as_path(options.model) and not model_dir.exists():
        raise RegenerationError(
            f"no such model folder: {options.model} (check the path; a hub model is named ORG/NAME)"
        )
    inputs = [input_path] + ([model_dir] if model_dir is not None and model_dir.is_dir() else [])
    check_outputs_apart(inputs=inputs, outputs=[output_path], what="output")
    check_outputs_apart(inputs=inputs, outputs=[err_path], what="error file")
    for path in (output_path, err_path):
        if path.is_dir():
            raise RegenerationError(f"{path} is a folder; --output-file-path must name a .jsonl file")
        parent = next((q for q in path.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise RegenerationError(f"cannot write {path}: {parent} is a file, not a folder")
    input_files = list_input_files(input_path)  # listed once, now: a folder input never sees what this run writes
    if output_path.exists() and output_path.stat().st_size > 0 and not options.resume and not options.overwrite:
        raise OutputExistsError(
            f"{output_path} already has rows; pass --resume to continue it or --overwrite to start over"
        )
    check_error_file(err_path)
    return input_files


def check_resume(options: RegenerateOptions, *, scan: OutputScan, identity: ModelIdentity, log: Log) -> None:
    """With --resume: refuse an output another model wrote (see ``identity``)."""
    if options.resume:
        check_resume_model(
            existing=scan.models,
            legacy_rows=scan.legacy_rows,
            identity=identity,
            output_path=options.output_path,
            log=log,
        )


def start_output(options: RegenerateOptions, *, scan: OutputScan, log: Log) -> set:
    """Make the output ready to append to (mend a crash's tail, or start it over); return the ids already done."""
    output_path = options.output_path
    if options.resume:
        repair_tail(output_path, scan, log)
        if scan.ids:
            log(f"[regenerate] resuming: {len(scan.ids)} conversations already in {output_path}")
    if options.overwrite and output_path.exists():
        output_path.write_bytes(b"")  # asked for: start over
    clear_stale_errors(options.error_path)
    return scan.ids
