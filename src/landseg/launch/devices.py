"""The host's devices as the processes landseg starts share them: GPUs and CPU threads.

One place for the questions that ``landseg cv --workers``, its MPI ranks and ``landseg predict
--workers`` all ask: which GPUs this process may use (without initialising CUDA, so that a
worker can still be given one of them), how many CPUs it may run on, and how to put a process
on a number of threads before torch starts its pools.
"""

from __future__ import annotations

import os


def visible_gpus(device: str = "auto") -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries; none with
    ``device="cpu"``.

    ``CUDA_VISIBLE_DEVICES`` when it is set (a scheduler's choice; ``-1`` and other negative
    entries hide every GPU after them), else torch's count, which asks NVML and does not
    initialise CUDA: a worker started afterwards may still be pinned to one GPU.
    """
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for entry in (part.strip() for part in listed.split(",")):
            if entry.startswith("-"):
                break  # CUDA ignores this entry and every one after it
            if entry:
                gpus.append(entry)
        return gpus
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pin_gpu(index: int, gpus: list[str]) -> str | None:
    """Give worker ``index`` one of ``gpus`` (round robin) before anything initialises CUDA;
    the GPU given, or None when there is none."""
    if not gpus:
        return None
    gpu = gpus[index % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_share(sharers: int) -> int:
    """The threads each of ``sharers`` processes gets when they share this host's CPUs: at
    least one, so that N processes with every core each do not fight over the cores."""
    return max(1, available_cpus() // max(1, sharers))


def limit_threads(threads: int) -> None:
    """Use ``threads`` threads in this process: OpenMP's and MKL's (read when torch starts,
    so best set before it is imported; processes started from this one inherit them, DDP's
    included) and torch's own pool."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
