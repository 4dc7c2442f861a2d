"""Engine-agnostic scheduling: batched waves of turns, or one thread per conversation."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Iterator

from deepspec.data.regenerate.common import ConversationJob, Messages, TurnResult, check_answer, failed_turn

if TYPE_CHECKING:
    from deepspec.data.regenerate.openai_backend import OpenAIBackend


def _generate_isolating(backend, batch: list[Messages]) -> list[TurnResult]:
    """One backend call; if it raises, retry item by item so one bad prompt fails only itself."""
    try:
        results = backend.generate(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"backend returned {len(results)} results for {len(batch)} requests")
        return results
    except Exception as e:  # noqa: BLE001 - reported per conversation
        if len(batch) == 1:
            return [failed_turn(f"{type(e).__name__}: {e}")]
    out = []
    for messages in batch:
        try:
            out.extend(backend.generate([messages]))
        except Exception as e:  # noqa: BLE001
            out.append(failed_turn(f"{type(e).__name__}: {e}"))
    return out


def run_batched(jobs: Iterator[ConversationJob], backend, *, batch_size: int, on_done, on_fail) -> None:
    """Waves of one turn per active conversation; finished ones are replaced from the input at once."""
    active: list[ConversationJob] = []
    exhausted = False
    while True:
        while not exhausted and len(active) < batch_size:
            job = next(jobs, None)
            if job is None:
                exhausted = True
            elif job.finished:  # nothing to generate (cannot happen for valid input, kept for safety)
                on_done(job)
            else:
                active.append(job)
        if not active:
            return
        results = _generate_isolating(backend, [j.next_messages() for j in active])
        still = []
        for job, result in zip(active, results):
            result = check_answer(result)
            if result.error is not None:
                on_fail(job, result)
                continue
            job.accept(result)
            if job.finished:
                on_done(job)
            else:
                still.append(job)
        active = still


def run_concurrent(
    jobs: Iterator[ConversationJob], backend: OpenAIBackend, *, concurrency: int, on_done, on_fail
) -> None:
    """Each conversation runs on a worker thread, turn after turn; writing stays on this thread."""

    def work(job: ConversationJob):
        while not job.finished:
            result = check_answer(backend.generate_one(job.next_messages()))
            if result.error is not None:
                return job, result
            job.accept(result)
        return job, None

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="regen")
    pending: set = set()

    def drain(block_until_below: int) -> None:
        nonlocal pending
        while len(pending) > block_until_below:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job, failure = fut.result()
                if failure is not None:
                    on_fail(job, failure)
                else:
                    on_done(job)

    try:
        for job in jobs:
            pending.add(pool.submit(work, job))
            drain(2 * concurrency)  # bounded queue: memory stays flat on huge inputs
        drain(0)
    except BaseException:
        backend.stop.set()  # retry loops give up at once; requests on the wire end within the timeout
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
