"""Device and dtype choice for every local model, at inference and in training: ``"auto"`` picks
CUDA, then MPS, then CPU; bfloat16 on CUDA, float16 on MPS, float32 elsewhere."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aligner_chain.errors import AlignerError

if TYPE_CHECKING:
    import torch

__all__ = [
    "accelerator_present",
    "bf16_supported",
    "check_device",
    "check_dtype",
    "resolve_device",
    "resolve_dtype",
]

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
_DTYPE_NAMES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_device(device: str | Any = "auto") -> str:
    """The torch device string for ``device``: ``"auto"`` picks CUDA, then MPS, then CPU.

    Raises:
        ValueError: an unknown device string.
        AlignerError: the device is not available on this machine.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise AlignerError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise AlignerError(f"device={device!r} but MPS is not available here; use device='auto' or 'cpu'")
    return device


def resolve_dtype(dtype: str | Any, device: str) -> torch.dtype:
    """The torch dtype for ``dtype`` on ``device``: ``"auto"`` is bfloat16 on CUDA, float16 on MPS
    and float32 elsewhere.

    Raises:
        ValueError: an unknown dtype string.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = check_dtype(dtype)
    if name == "auto":
        kind = device.split(":")[0]
        name = {"cuda": "bfloat16", "mps": "float16"}.get(kind, "float32")
    result: torch.dtype = getattr(torch, name)
    return result


def accelerator_present() -> bool:
    """Whether a CUDA or MPS device is here (pinned host memory only helps with one)."""
    import torch

    return bool(torch.cuda.is_available() or torch.backends.mps.is_available())


def bf16_supported() -> bool:
    """Whether a CUDA device that computes in bfloat16 is here (bf16 training by default)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def check_device(device: object) -> None:
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(
            f"device={device!r} is not supported; use 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N' "
            "(or a torch.device)"
        )


def check_dtype(dtype: object) -> str:
    name = _DTYPE_NAMES.get(dtype.lower()) if isinstance(dtype, str) else None
    if name is None:
        raise ValueError(
            f"dtype={dtype!r} is not supported; use 'auto', 'float32', 'bfloat16' or 'float16' "
            "(or a torch.dtype)"
        )
    return name
