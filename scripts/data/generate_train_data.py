#!/usr/bin/env python
"""Regenerate the assistant turns of a conversation file with the target model.

Run with --help for the options. The work is done by deepspec.data.regenerate;
this wrapper only makes the repository importable when deepspec is not
installed in the interpreter that runs it (e.g. a fresh vLLM environment).
"""

import sys
from pathlib import Path


def _main() -> int:
    try:
        import deepspec  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deepspec.data.regenerate import main

    return main()


# The guard matters: vLLM starts worker processes that re-import this file.
if __name__ == "__main__":
    sys.exit(_main())
