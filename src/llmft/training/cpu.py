"""CPU tuning for training: threads per core, the bf16 choice, and glibc's heap. Process-wide settings, so only the
trainer (asked by the CLI or the caller) applies them."""
from __future__ import annotations

import os
from pathlib import Path

import torch

def cpu_has_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_bf16(setting: str, device: torch.device) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def set_cpu_threads(local_world_size: int) -> int:
    """One thread per physical core (hyper-threads slow GEMMs down), shared among the processes of this machine, less
    the cores other processes keep busy right now; an explicit OMP_NUM_THREADS wins.

    Why the busy cores: an OpenMP thread that shares its core with another process stalls every parallel region
    (hundreds of thousands per step). SmolLM2 LoRA on 2 cores next to one busy process: 2 threads 132 real tokens/s
    (30 with libgomp's default spin count), 1 thread 296; on the quiet machine 2 threads give ~410."""
    import psutil

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    threads = max(1, cores // max(1, local_world_size))
    if local_world_size == 1:          # sibling ranks starting up would count as busy
        threads = max(1, threads - busy_cores())
    torch.set_num_threads(threads)
    return threads


def busy_cores(interval_s: float = 0.3) -> int:
    """Cores kept busy by other processes over `interval_s` (this process sleeps meanwhile)."""
    import psutil

    return int(psutil.cpu_percent(interval=interval_s) * (psutil.cpu_count() or 1) / 100 + 0.5)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20     # glibc's ceiling on 64-bit


def keep_freed_memory_in_heap() -> bool:
    """glibc serves every allocation above its mmap threshold with a fresh mmap and unmaps it on free, so each
    activation tensor of a training step is page-faulted in from zeroed pages again (~9% of a SmolLM2 CPU step was
    system time). Raising the mmap threshold to its maximum, trimming the heap only above 2 GiB and growing it 256 MiB
    at a time lets freed blocks be reused: +9% tokens/s in bench/train_throughput.py (of which ~3% the top pad) for no
    measurable peak RSS. Process-wide, so only the trainer on CPU calls it; False where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]     # values above 2^31 would be truncated silently
    return all(mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20)))
