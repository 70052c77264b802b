"""CPU tuning: threads per core, the bf16 choice, and glibc's heap. Threads and heap are process-wide settings, so
llmft never changes them on its own: the CLI calls `tune_process()` before training or generating, and a Python user
may (`llmft.tune_cpu()`)."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmft import io
from llmft.errors import LlmftError

ISA_ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
# The probe: one frozen linear of a small model's MLP (SmolLM2-135M: 576 -> 1536), forward and input gradient, as a
# LoRA step runs its base weights, over a packed row's worth of tokens. Small enough that a kernel 100x slower than
# fp32 (bf16 emulated on AVX2) still answers in a fraction of a second.
PROBE_SHAPE = (256, 576, 1536)         # tokens, in, out
PROBE_REPS = 5
PROBE_MAX_S = 1.5                      # stop repeating once the probe has taken this long
# bf16 must beat fp32 by this much on the probe: a bf16 step also pays autocast's casts and bf16 elementwise kernels,
# which the matmul probe does not see. Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX; bench/compute_dtype.py):
# probe 2.1x -> demo training steps 1.39x faster in bf16, probe 3.7x -> 1.41x; AVX2 only: probe 0.05-0.2x, bf16
# steps many times slower. Training gains far less than the probe, hence a margin rather than 1.0.
BF16_MIN_SPEEDUP = 1.25
DTYPE_CACHE = "compute-dtype"


@dataclass
class DtypeChoice:
    bf16: bool
    reason: str                        # "forced" (--bf16 true/false), "cuda", "measured", "cached", "not-cpu"
    rates: dict | None = None          # the probe's GFLOP/s per dtype, threads, key

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choose_compute_dtype(setting: str, device: torch.device) -> DtypeChoice:
    """`--bf16 true|false` wins; on CUDA, bf16 where the GPU supports it; on the CPU, bf16 only when its matmul
    kernels really run faster than fp32 here (a short probe, cached per machine and ISA setting). A CPU flag is not
    enough: AVX512-BF16 without AMX ran bf16 matmuls at half the fp32 rate on one Xeon, and under an AVX2-only ISA
    bf16 is emulated ~100x slower."""
    if setting in ("true", "false"):
        return DtypeChoice(setting == "true", "forced")
    if device.type == "cuda":
        return DtypeChoice(torch.cuda.is_bf16_supported(), "cuda")
    if device.type != "cpu":
        return DtypeChoice(False, "not-cpu")
    path = io.cache_dir() / DTYPE_CACHE / f"{machine_key()}.json"
    if path.exists():
        try:
            rates = io.load_json(path)
            return DtypeChoice(bool(rates["bf16_faster"]), "cached", rates)
        except (LlmftError, KeyError, TypeError):
            pass                                            # a damaged cache entry is measured again
    rates = {**measure_matmul_rates(), "key": machine_key()}
    rates["bf16_faster"] = rates["bf16_gflops"] >= BF16_MIN_SPEEDUP * rates["fp32_gflops"]
    try:
        io.write_json(path, rates)
    except OSError:
        pass                                                # a read-only cache only costs a probe next time
    return DtypeChoice(rates["bf16_faster"], "measured", rates)


def machine_key() -> str:
    """What decides which kernels run: the CPU (model name and flags), the torch build, the ISA caps set in the
    environment, and ATen's dispatch level."""
    import hashlib
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line + "\n"
            if line.startswith("flags"):
                break
    except OSError:
        cpu = platform.processor() or platform.machine()
    parts = [cpu, torch.__version__, torch.backends.cpu.get_cpu_capability()]
    parts += [f"{name}={os.environ.get(name, '')}" for name in ISA_ENVIRONMENT]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def measure_matmul_rates(shape: tuple[int, int, int] = PROBE_SHAPE, reps: int = PROBE_REPS,
                         max_s: float = PROBE_MAX_S) -> dict:
    """GFLOP/s of the probe linear (forward + input gradient) in fp32 and in bf16, the best of alternating repeats,
    so a load swing on a shared machine hits both dtypes alike."""
    tokens, d_in, d_out = shape
    flops = 2 * 2 * tokens * d_in * d_out
    generator = torch.Generator().manual_seed(0)
    weights = {dtype: (torch.randn(d_out, d_in, generator=generator) * 0.02).to(dtype)
               for dtype in (torch.float32, torch.bfloat16)}
    x = torch.randn(tokens, d_in, generator=generator)
    inputs = {dtype: x.to(dtype) for dtype in weights}
    best = {dtype: float("inf") for dtype in weights}
    started = time.perf_counter()
    for rep in range(reps + 1):                        # the first round is a warm-up (kernel selection, JIT)
        for dtype in weights:
            seconds = _linear_seconds(inputs[dtype], weights[dtype])
            if rep:
                best[dtype] = min(best[dtype], seconds)
        if rep and time.perf_counter() - started > max_s:
            break
    if not any(math.isfinite(s) for s in best.values()):          # the warm-up alone ran past max_s
        best = {dtype: _linear_seconds(inputs[dtype], weights[dtype]) for dtype in weights}
    return {"fp32_gflops": round(flops / best[torch.float32] / 1e9, 2),
            "bf16_gflops": round(flops / best[torch.bfloat16] / 1e9, 2),
            "threads": torch.get_num_threads(), "probe_shape": list(shape),
            "probe_s": round(time.perf_counter() - started, 3)}


def _linear_seconds(x: torch.Tensor, weight: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    started = time.perf_counter()
    out = torch.nn.functional.linear(x, weight)
    out.backward(torch.ones_like(out))
    return time.perf_counter() - started


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


def tune_process() -> dict:
    """Threads per core (less the cores other processes keep busy) and, on CPU, glibc's heap kept for reuse."""
    from llmft.training.distributed import local_world_size

    if torch.cuda.is_available():
        return {"threads": torch.get_num_threads(), "heap_kept": False}
    threads = set_cpu_threads(local_world_size())
    return {"threads": threads, "heap_kept": keep_freed_memory_in_heap()}
