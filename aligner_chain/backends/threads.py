"""The intra-op thread pool of the thread that decodes, sized by the backend and kept to itself.

With torch's OpenMP backend every thread that runs a parallel op gets its own team of helper
threads, alive until that thread exits. A decoding thread's idle team makes the process hold more
OpenMP threads than cores, and libgomp then stops spin-waiting in *every* team: torch work in the
caller's threads ran about 25-50% slower while the worker merely idled. So the decoding thread sizes
its own pool here (``torch.set_num_threads`` is per thread with OpenMP) and, on CPU, exits soon after
it goes idle (:mod:`aligner_chain.backends.batching`), which releases its team.

``torch.set_num_threads`` also changes the default that threads which have not run torch yet pick
up later; :func:`own_thread_pool` puts that default back, so the backend never changes another
thread's pool.
"""

from __future__ import annotations

import threading

__all__ = ["default_threads", "own_thread_pool"]


def default_threads(device: str) -> int:
    """The decoding thread's pool size for ``device``: 1 on an accelerator (the work is on the
    device; more host threads only add idle teams), else the process default (usually the cores)."""
    if device.split(":")[0] in ("cuda", "mps", "xpu", "npu"):
        return 1
    return _process_default()


def own_thread_pool(threads: int) -> int:
    """Size the calling thread's torch pool to ``threads``, leaving every other thread's (and the
    process default) as it was. Returns the process default."""
    import torch

    default = _process_default()
    torch.get_num_threads()  # this thread's lazy init first, or its first op would reset the size
    torch.set_num_threads(threads)
    if threads != default:
        # set_num_threads also stored ``threads`` as the default for threads that have not run torch
        # yet; a short-lived thread sets it back (its own pool dies with it).
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="torch-threads")
        restore.start()
        restore.join()
    return default


def _process_default() -> int:
    """The pool size a thread that has not run torch yet would get."""
    import torch

    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()), name="torch-threads")
    probe.start()
    probe.join()
    return seen[0]
