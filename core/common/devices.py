"""Which device a stage runs on: ``auto`` (CUDA, then MPS, then CPU) or a named one, checked before any work."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import TYPE_CHECKING

from core.common.errors import MemoScopeError

if TYPE_CHECKING:  # torch loads when a device is resolved, not with the configs that name one
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cuda[:i]``/``mps``/``cpu`` are checked."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MemoScopeError(f"--device {name!r} is not a device; use auto, cpu, cuda[:i] or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MemoScopeError(f"--device {name}: no CUDA GPU is visible; use --device cpu or auto.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MemoScopeError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0 ...); pick one of them."
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MemoScopeError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto.")
    return device


def device_choices() -> list[str]:
    """The devices a user can pick here: ``auto``, ``cpu``, each visible CUDA GPU (``cuda:i``) and ``mps``."""
    import torch

    found = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


def precision_choices(device: torch.device) -> list[str]:
    """The precisions :func:`check_precision` accepts on ``device`` (fp32 first)."""
    return [p.value for p in Precision if not (p == Precision.FP16 and device.type == "cpu")]


def device_description(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return device.type


class Precision(StrEnum):
    """The dtype a forward pass runs in: ``fp32``, or mixed precision with ``fp16``/``bf16`` (autocast)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs in; ``None`` for full precision (no autocast)."""
        import torch

        return {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}.get(self)


def check_precision(device: torch.device, precision: str) -> Precision:
    """``precision`` if ``device`` runs it: fp16 autocast is for GPUs (a CPU computes it slowly or not at all)."""
    chosen = Precision(precision)
    if chosen == Precision.FP16 and device.type == "cpu":
        raise MemoScopeError(
            "--precision fp16 needs a GPU; on the CPU use fp32 (bf16 runs there, but on a CPU without bf16 units it "
            "is many times slower than fp32: `bash benchmarks/gpu_check.sh --device cpu --quick` measures it)."
        )
    return chosen


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Mixed precision for the forward passes inside, or nothing for fp32."""
    import torch

    dtype = Precision(precision).autocast_dtype
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
