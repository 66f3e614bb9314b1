"""``native_bf16`` answers what this CPU computes natively, as the kernel reports it.

``precision: auto`` rests on it: a wrong "no" silently trains 2-4x slower in float32, a wrong
"yes" trains slower in emulated bf16. Its answers are checked against ``/proc/cpuinfo`` (the
kernel lists ``amx_tile`` and ``avx512_bf16`` only where the CPU has them and the kernel
enabled them), and the private torch functions it relies on must exist: were they renamed,
it would fall back to "no" without a word.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from landseg.launch import hardware

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (every core of a machine has the same)."""
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags (not an x86 CPU)")


def test_the_torch_functions_native_bf16_calls_exist() -> None:
    """``native_bf16`` reads them with ``getattr(..., lambda: False)``: were one renamed in a
    torch release, every machine would be reported as lacking bf16 and train in float32."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        assert callable(getattr(torch.cpu, name, None)), f"torch.cpu.{name} is gone"


@pytest.mark.skipif(
    not CPUINFO.exists() or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs Linux /proc/cpuinfo on an x86 CPU",
)
def test_native_bf16_on_this_cpu_agrees_with_the_kernels_cpu_flags() -> None:
    flags = cpu_flags()
    if "amx_tile" in flags:
        expected = (True, "this CPU computes bf16 natively (AMX)")
    elif "avx512_bf16" in flags:
        expected = (True, "this CPU computes bf16 natively (AVX-512 BF16)")
    else:
        expected = (False, "this CPU has neither AMX nor AVX-512 BF16")
    assert hardware.native_bf16("cpu") == expected
    if not torch.cuda.is_available():  # "auto" is the CPU's answer on a machine without a GPU
        assert hardware.native_bf16("auto") == expected
