"""Regenerate every assistant turn of a conversation file with the target model.

A draft model learns to imitate the target, so it should be trained on the
target's *own* answers, not on whatever model wrote the public data set. For
each conversation the user turns are kept and each assistant turn is replaced
by what the target answers given the conversation so far, where "so far" holds
the already regenerated earlier answers (turn k is conditioned on the target's
turns 1..k-1, exactly as at inference). A conversation that ends with a user
turn (a plain prompt file) gets an answer for that turn too.

Three backends produce the answers:

* ``vllm``   -- an in-process ``vllm.LLM`` engine (one per GPU group through
  ``data_parallel_size`` worker processes; a single engine on CPU);
* ``openai`` -- one or more OpenAI-compatible servers (for example the ones
  ``scripts/data/launch_vllm_server.sh`` starts), spoken to with the standard
  library only, so the main environment needs nothing extra;
* ``hf``     -- transformers ``generate``, batched with left padding, for
  machines without vLLM.

Output rows are appended to the output file (and flushed) as soon as a whole
conversation is done, so a crash loses at most the conversations in flight and
``resume=True`` continues where the file ends. Failures are appended to
``<output stem>_error.jsonl`` with the conversation id and a reason.

Each row records the model that wrote it (``"generated_by": {"model", "fingerprint"}``, see
``identity``); ``resume=True`` refuses an output another model wrote. Before anything is
opened, the output and error files are checked against the input (and a local model folder):
neither may be an input nor sit inside an input folder.

The command line lives in :func:`main` (``scripts/data/generate_train_data.py``); it builds one
:class:`RegenerateOptions` and calls :func:`regenerate` with it.

Layout: ``common`` (settings, results, conversation jobs, input/output/resume/error
files), ``identity`` (the model record), ``hf_backend``, ``vllm_backend`` (including data-parallel
workers), ``openai_backend``, ``drivers`` (batched and concurrent scheduling), ``options``
(:class:`RegenerateOptions`, every default), ``sink`` (where rows, failures and skips go),
``backends`` (:data:`BACKENDS`, the one table of backends: check, open, drive), ``runner``
(:func:`regenerate`) and ``cli`` (:func:`build_parser`, :func:`main`).
"""

from deepspec.data.regenerate.backends import BACKENDS, default_backend
from deepspec.data.regenerate.cli import build_parser, main
from deepspec.data.regenerate.common import RegenerationSummary, SamplingSettings, TurnResult, error_path_for
from deepspec.data.regenerate.hf_backend import HFBackend
from deepspec.data.regenerate.identity import ModelIdentity, ModelMismatchError, model_identity
from deepspec.data.regenerate.openai_backend import OpenAIBackend
from deepspec.data.regenerate.options import RegenerateOptions
from deepspec.data.regenerate.runner import regenerate
from deepspec.data.regenerate.vllm_backend import VLLMBackend

__all__ = [
    "SamplingSettings",
    "TurnResult",
    "RegenerationSummary",
    "HFBackend",
    "VLLMBackend",
    "OpenAIBackend",
    "error_path_for",
    "ModelIdentity",
    "ModelMismatchError",
    "model_identity",
    "BACKENDS",
    "default_backend",
    "RegenerateOptions",
    "regenerate",
    "build_parser",
    "main",
]
