"""How much a device can hold: the KV-cache bytes a token costs, the memory free for it, the default
static batch size (chosen by device and bounded by memory) and the continuous-batching cache bounds.

Every figure is computed once at load from the model's config and the device's free memory; nothing
here runs a model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BATCH_TARGETS",
    "ContinuousBounds",
    "continuous_bounds",
    "default_batch_size",
    "free_memory_bytes",
    "kv_bytes_per_token",
]

BATCH_TARGETS = {"cpu": 8, "mps": 16, "cuda": 64}
"""Rows per static ``generate`` by device kind (before the memory bound). A CPU is compute-bound:
on the real length mix of Aligner corrections (prompts p50 434 tokens, left-padded to the longest)
batches of 8 gave the most tokens/s of 8, 16, 32 and 64, and 32 about 0.4x of 8 (2-core CPU,
``benchmarks/bench_decoding.py``). A GPU is bound by memory bandwidth: a decode step costs about the
same at 64 rows as at one."""

_STATIC_MEMORY_SHARE = 0.25  # of the free memory, for one static batch's KV cache
_CONTINUOUS_MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.1, "mps": 0.25}  # of the free memory, for the paged cache
_CONTINUOUS_MEMORY_CAP = {"cpu": 1 << 30, "mps": 4 << 30}  # bytes; CUDA is bounded by its share only
_PAGE_SIZE = {"cuda": 256, "cpu": 32, "mps": 64}
_BATCH_TOKENS = {"cuda": 4096, "cpu": 512, "mps": 1024}  # tokens in one forward of the paged cache
_MAX_REQUESTS = {"cuda": 256, "cpu": 64, "mps": 64}  # rows in one forward of the paged cache


def kv_bytes_per_token(config: Any, dtype: Any) -> int:
    """The KV-cache bytes one token takes: keys and values in every layer."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = getattr(text, "head_dim", None) or (int(text.hidden_size) // max(heads, 1))
    itemsize = int(getattr(dtype, "itemsize", 4))
    return max(1, 2 * layers * kv_heads * int(head_dim) * itemsize)


def free_memory_bytes(device: str) -> int | None:
    """Memory free for caches on ``device`` now (after the model is loaded); ``None`` when unknown."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    try:  # CPU and MPS (unified memory): what the OS can still hand out
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_batch_size(device: str, *, kv_per_token: int, row_tokens: int, free_bytes: int | None) -> int:
    """The static batch size for ``device``: :data:`BATCH_TARGETS` for its kind, lowered so that
    one batch of ``row_tokens``-token rows keeps its KV cache within a quarter of ``free_bytes``."""
    target = BATCH_TARGETS.get(device.split(":")[0], BATCH_TARGETS["cpu"])
    if free_bytes is None:
        return target
    fits = int(free_bytes * _STATIC_MEMORY_SHARE) // max(1, kv_per_token * row_tokens)
    return max(1, min(target, fits))


@dataclass(frozen=True)
class ContinuousBounds:
    """Explicit bounds for the continuous-batching paged cache (``ContinuousBatchingConfig`` fields)."""

    page_size: int
    num_blocks: int
    max_batch_tokens: int
    max_requests_per_batch: int

    @property
    def capacity_tokens(self) -> int:
        """The most tokens (prompt + generated) the cache holds: no request can be longer."""
        return self.page_size * self.num_blocks

    def as_config(self) -> dict[str, int]:
        return {
            "page_size": self.page_size,
            "num_blocks": self.num_blocks,
            "max_batch_tokens": self.max_batch_tokens,
            "max_requests_per_batch": self.max_requests_per_batch,
        }


def continuous_bounds(
    device: str, *, kv_per_token: int, free_bytes: int | None, context_length: int | None
) -> ContinuousBounds:
    """Cache bounds for ``device``: a share of the free memory (half on CUDA, a tenth of the RAM up
    to 1 GiB on CPU) in pages, never fewer than one full-context request needs."""
    kind = device.split(":")[0] if device.split(":")[0] in _PAGE_SIZE else "cpu"
    page = _PAGE_SIZE[kind]
    budget = int((free_bytes or 0) * _CONTINUOUS_MEMORY_SHARE[kind])
    if kind in _CONTINUOUS_MEMORY_CAP:
        budget = min(budget, _CONTINUOUS_MEMORY_CAP[kind]) if budget else _CONTINUOUS_MEMORY_CAP[kind]
    blocks = budget // max(1, kv_per_token * page)
    one_request = math.ceil((context_length or 4096) / page)
    return ContinuousBounds(
        page_size=page,
        num_blocks=max(blocks, one_request, 4),
        max_batch_tokens=_BATCH_TOKENS[kind],
        max_requests_per_batch=_MAX_REQUESTS[kind],
    )
