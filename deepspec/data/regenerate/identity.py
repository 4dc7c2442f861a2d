"""Which model wrote a regenerated row: a record per row, and the check ``--resume`` makes.

Every output row carries ``"generated_by": {"model": NAME, "fingerprint": FP}``. ``NAME`` is the model as
it was named (a folder, a hub id, a served model name); ``FP`` is what is compared:

* a local folder: :func:`deepspec.target_files.target_fingerprint` (its config and the names, sizes and
  sampled bytes of its weight files; the same identity the target cache records), so a fine-tune in a
  folder with the same last name differs, and the same folder spelled two ways (or moved) does not;
* anything else (a hub id, a name a server gives its model): ``name:<id>``, which is all we know there.

Readers of the output (the cache builder, :func:`deepspec.data.conversations.read_conversations`) ignore
unknown row fields, so rows with the record read exactly as rows without it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from deepspec.errors import DeepSpecError

RECORD_KEY = "generated_by"


class ModelMismatchError(DeepSpecError, ValueError):
    """``--resume`` would add rows of another model to an output; the message says what to do."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    fingerprint: str

    def record(self) -> dict:
        return {"model": self.name, "fingerprint": self.fingerprint}

    def describe(self) -> str:
        return f"{self.name} ({self.fingerprint})"


def model_identity(model: str) -> ModelIdentity:
    """The identity of ``model``: a fingerprint for a local folder, the id string otherwise."""
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        from deepspec.target_files import target_fingerprint  # the cache manifest's identity too: one rule

        return ModelIdentity(name=model, fingerprint=target_fingerprint(path.resolve()))
    return ModelIdentity(name=model, fingerprint=f"name:{model}")


def check_resume_model(*, existing: Counter, legacy_rows: int, identity: ModelIdentity, output_path, log) -> None:
    """Refuse to resume an output whose rows another model wrote.

    ``existing`` counts the rows by ``(model, fingerprint)`` of their record; ``legacy_rows`` are rows
    written before rows carried a record (they are kept, with a warning: nothing says who wrote them).
    """
    others = {key: n for key, n in existing.items() if key[1] != identity.fingerprint}
    if others:
        (name, fp), n = max(others.items(), key=lambda kv: kv[1])
        more = f" (and {len(others) - 1} other model(s))" if len(others) > 1 else ""
        raise ModelMismatchError(
            f"{output_path} holds {n} row(s) written by {name} ({fp}){more}, but --model asks for "
            f"{identity.describe()}; resuming would mix two targets' answers. Pass --overwrite to start the "
            "output over with this model, or choose a new --output-file-path"
        )
    if legacy_rows:
        log(
            f"[regenerate] WARNING: {legacy_rows} rows of {output_path} carry no '{RECORD_KEY}' record (written by "
            f"an older version), so which model wrote them is unknown; they are kept as if {identity.name} had. "
            "Use --overwrite if that is not so"
        )
