"""Helpers shared by the benchmarks: machine description, peak RSS, load, a bf16 matmul peak, package versions and
a precise update of one `## ` section of BENCHMARKS.md."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"

# Environment variables that cap the kernels torch may use, so one machine stands in for CPUs with less (issue 15):
# an AVX-512 BF16 CPU without AMX, and an AVX2 laptop (fp32 matmuls go through MKL, so all three variables).
ISA_SETTINGS = {
    "native": {},
    "avx512-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_env(base: dict, setting: str) -> dict:
    """`base` with the ISA caps of `setting` in place of any it had."""
    env = {k: v for k, v in base.items() if k not in ISA_VARIABLES}
    env.update(ISA_SETTINGS[setting])
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_info() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": round(ram_gib(), 1),
            "python": platform.python_version(), "date": dt.date.today().isoformat(),
            "bf16_isa": [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def matmul_gflops(size: int = 2048, dtype: str = "bfloat16", repeats: int = 5, max_seconds: float = 5.0) -> float:
    """Best-of-`repeats` GFLOP/s of one size^3 matmul under the current torch thread count. Stops repeating after
    `max_seconds`: an emulated dtype (bf16 under AVX2: ~40 s per matmul) is measured once, not for minutes."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    started = time.perf_counter()
    a @ b   # warm-up: oneDNN picks and JITs its kernel here
    if time.perf_counter() - started > max_seconds:
        a, b = a[: size // 4, : size // 4].contiguous(), b[: size // 4, : size // 4].contiguous()
        size //= 4            # far too slow to matter: a smaller matmul gives its rate well enough
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() - started > max_seconds:
            break
    return 2 * size**3 / best / 1e9


def counting_sft_trainer(counts: dict):
    """TRL's SFTTrainer that adds each step's real (attention-mask sum, or the packed row length when
    padding-free), padding and trainable (label != -100) tokens to `counts`."""
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            real = int(mask.sum()) if mask is not None else ids.numel()
            counts["real"] += real
            counts["padded"] += ids.numel() - real
            counts["trainable"] += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingSFTTrainer


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def update_section(heading: str, text: str, path: Path = BENCHMARKS) -> None:
    """Replace the section that starts with `heading` (up to the next '## ' heading) or append it; the rest of the
    file stays byte for byte. Read right before writing, since other benchmarks edit the same file."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text.rstrip("\n") + "\n" + (old[end:] if end >= 0 else "")
    write_atomic(path, new)


def has_markers(path: Path, begin: str) -> bool:
    return path.exists() and begin in path.read_text(encoding="utf-8")


def replace_between(path: Path, begin: str, end: str, body: str) -> None:
    """Replace what lies between the `begin` and `end` marker lines of `path` with a newline and `body`."""
    text = path.read_text(encoding="utf-8")
    start, stop = text.index(begin) + len(begin), text.index(end)
    write_atomic(path, text[:start] + "\n" + body + text[stop:])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
