"""What the hardware computes fast: the one question behind ``device_setup.precision: auto``.

bfloat16 mixed precision with channels-last memory is 2-4x faster than float32 where the
hardware computes bf16 natively: CPUs with AMX or AVX-512 BF16, NVIDIA GPUs of compute
capability 8.0 (Ampere) or later. Elsewhere it is emulated and slower, so ``auto`` keeps
float32 there. ``torch.cuda.is_bf16_supported()`` is not the test: it also says yes on older
GPUs, through emulation.

Tests mock :func:`native_bf16` (one function) to pretend either kind of machine.
"""

from __future__ import annotations

from dataclasses import dataclass


def native_bf16(accelerator: str) -> tuple[bool, str]:
    """(whether ``accelerator`` computes bf16 natively here, the reason in a few words)."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        name = torch.cuda.get_device_name()
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) computes bf16 natively"
        return False, f"{name} (compute capability {major}.{minor}) has no native bf16"
    if accelerator in ("cpu", "auto"):
        cpu = torch.cpu
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return True, "this CPU computes bf16 natively (AMX)"
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return True, "this CPU computes bf16 natively (AVX-512 BF16)"
        return False, "this CPU has neither AMX nor AVX-512 BF16"
    return False, f"{accelerator}: bf16 is not chosen automatically there"


@dataclass(frozen=True)
class FastPaths:
    """The precision and memory format a run trains with, and why (printed, in run.json)."""

    precision: str
    channels_last: bool
    reason: str


def choose_fast_paths(precision: str, channels_last: bool | str, accelerator: str) -> FastPaths:
    """Resolve ``auto`` in ``device_setup.precision`` and ``channels_last``.

    ``precision: auto``: ``bf16-mixed`` where :func:`native_bf16`, else ``32-true``;
    ``channels_last: auto``: on exactly when bf16 is chosen. Explicit values are kept.
    """
    if precision == "auto":
        fast, why = native_bf16(accelerator)
        precision = "bf16-mixed" if fast else "32-true"
        reason = f"precision auto: {why}"
    else:
        reason = "precision set in the config"
    if channels_last == "auto":
        channels_last = precision in ("bf16-mixed", "16-mixed")
    return FastPaths(precision, bool(channels_last), reason)
