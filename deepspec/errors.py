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


def check_outputs_apart(
    *,
    inputs: Iterable[str | os.PathLike],
    outputs: Iterable[str | os.PathLike] = (),
    output_dirs: Iterable[str | os.PathLike] = (),
    what: str = "output",
) -> None:
    """Refuse when a written path equals an input, sits inside an input folder, or would hold an input.

    ``inputs`` are files or folders that will be read. ``outputs`` are the files that will be written
    (final, temp and error files); ``output_dirs`` are folders the tool owns entirely (a cache), which
    therefore must not contain an input either. Symlinks are resolved, so two spellings of one file
    are caught too.
    """
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
