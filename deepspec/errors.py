"""The project's error base class and the one place entry points turn it into a message.

Every error we raise on purpose (bad input, a mismatch, a missing file) derives from
:class:`DeepSpecError` and carries a message that says what is wrong and what to do. Entry
points wrap ``main`` with :func:`cli_main`: a project error or an OSError (permission, full
disk) becomes one line on stderr and exit code 2; anything else is a bug and keeps its
traceback. ``DEEPSPEC_TRACEBACK=1`` shows the traceback in every case.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from deepspec.fsio import existing_ancestor

EXIT_USAGE = 2  # bad input / refused; argparse uses the same code


class DeepSpecError(Exception):
    """An error the user can fix; the message says how."""


class InputProtectionError(DeepSpecError):
    """An output, temp or error path would overwrite, sit inside, or be read back as an input."""


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate an entry point's ``main``: project errors print one line and return exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else fn.__module__
        try:
            code = fn(*args, **kwargs)
        except (DeepSpecError, OSError) as exc:
            # OSError: a permission, full disk or missing file the user must fix; the errno text and
            # file name say which. DEEPSPEC_TRACEBACK=1 shows the traceback of either kind.
            if os.environ.get("DEEPSPEC_TRACEBACK") == "1":
                raise
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
            return 130
        return 0 if code is None else int(code)

    return wrapper


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


# Folders that one of our tools (or Hugging Face) owns, known by the files that mark them. A tool writes into
# one only when it is of a kind it may write into (``may_write_into``): its own.
OWNED_KINDS = ("checkpoint root", "model folder", "target cache", "eval run")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def owned_kind(folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(kind, evidence)`` when ``folder`` is a folder of one of :data:`OWNED_KINDS` (evidence: the files that
    say so), else None. A checkpoint root holds ``step_latest`` or ``step_N/training_state.pt``; a model folder
    (a target, a draft step, an export) ``config.json`` and weights; a target cache its manifest and index or
    a partial build's ``rank*.meta.json``; an eval run ``results.json`` and ``rounds.jsonl``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if os.path.lexists(folder / "step_latest"):
        return "checkpoint root", "step_latest"
    step = next(iter(sorted(folder.glob("step_*/training_state.pt"))), None)
    if step is not None:
        return "checkpoint root", f"{step.parent.name}/training_state.pt"
    weights = next((w for w in _WEIGHTS if (folder / w).is_file()), None)
    if weights and (folder / "config.json").is_file():
        return "model folder", f"config.json and {weights}"
    if (folder / "manifest.json").is_file() and (folder / "index.bin").is_file():
        return "target cache", "manifest.json and index.bin"
    meta = next(iter(sorted(folder.glob("rank[0-9][0-9][0-9][0-9][0-9].meta.json"))), None)
    if meta is not None:
        return "target cache", f"{meta.name} of a partial build"
    if (folder / "results.json").is_file() and (folder / "rounds.jsonl").is_file():
        return "eval run", "results.json and rounds.jsonl"
    return None


def _check_not_owned(out: str | os.PathLike, *, may_write_into: Iterable[str], what: str) -> None:
    """Refuse ``out`` when it is, or lies in, an owned folder of a kind the tool may not write into."""
    allowed = set(may_write_into)
    o = _real(out)
    for folder in [o, *o.parents]:
        found = owned_kind(folder)
        if found is None or found[0] in allowed:
            continue
        kind, evidence = found
        a_kind = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        where = f"is {a_kind}" if folder == o else f"lies in {folder}, {a_kind}"
        raise InputProtectionError(
            f"{what} path {out} {where} (it holds {evidence}); this tool does not write into {a_kind}. "
            "Choose a path outside it."
        )


def check_outputs_apart(
    *,
    inputs: Iterable[str | os.PathLike],
    outputs: Iterable[str | os.PathLike] = (),
    output_dirs: Iterable[str | os.PathLike] = (),
    what: str = "output",
    may_write_into: Iterable[str] = (),
) -> None:
    """The one rule for outputs: refuse when a written path equals an input, sits inside an input folder, would
    hold an input, or is or lies in an owned folder (:func:`owned_kind`) of a kind not in ``may_write_into``.

    ``inputs`` are files or folders that will be read. ``outputs`` are the files that will be written
    (final, temp and error files); ``output_dirs`` are folders the tool owns entirely (a cache), which
    therefore must not contain an input either. ``may_write_into`` names the kinds of :data:`OWNED_KINDS` the
    tool writes itself (eval.py: "eval run"; a cache build: "target cache"). Symlinks are resolved, so two
    spellings of one file are caught too.
    """
    unknown = set(may_write_into) - set(OWNED_KINDS)
    if unknown:
        raise ValueError(f"may_write_into: unknown kinds {sorted(unknown)}; known: {OWNED_KINDS}")
    outputs, output_dirs = list(outputs), list(output_dirs)
    for out in outputs + output_dirs:  # a file where a folder must be made: said now, not as an errno later
        above = existing_ancestor(Path(os.path.expanduser(str(out))).parent)
        if not above.is_dir():
            raise InputProtectionError(
                f"{what} path {out} cannot be written: {above} is a file, not a folder; choose another path"
            )
    ins = [(str(p), _real(p)) for p in inputs]
    for out, owned in [(p, False) for p in outputs] + [(p, True) for p in output_dirs]:
        o = _real(out)
        for shown, i in ins:
            if o == i:
                raise InputProtectionError(
                    f"{what} path {out} is the input {shown}; writing it would destroy the input. "
                    "Choose another output path."
                )
            if i.is_dir() and _inside(o, i):
                raise InputProtectionError(
                    f"{what} path {out} lies inside the input folder {shown}, so it would be read back as "
                    "input. Write it outside that folder."
                )
            if owned and _inside(i, o):
                raise InputProtectionError(
                    f"{what} folder {out} contains the input {shown}; writing there could overwrite or "
                    "re-read it. Choose an output folder that does not hold the input."
                )
    for out in outputs + output_dirs:
        _check_not_owned(out, may_write_into=may_write_into, what=what)
