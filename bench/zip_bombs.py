"""What a zip bomb costs `llmft data convert unnatural-instructions`: wall time and peak RSS of the command on the two
bombs of issue 14 (a few MB of zip holding one N GiB line, or N GiB of newlines), with the default limits and with
max_compression_ratio raised out of the way (so the line limit and the blank-line skipping are what bound it).

    python bench/zip_bombs.py --gib 3          # writes the '## Zip bombs' section of BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loadavg, machine_info, update_section  # noqa: E402

CHUNK = 1 << 24


def write_bomb(path: Path, byte: bytes, gib: float) -> None:
    block = byte * CHUNK
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("core_data.jsonl", "w", force_zip64=True) as member:
            for _ in range(int(gib * (1 << 30)) // CHUNK):
                member.write(block)


def run(argv: list[str]) -> tuple[int, float, float, str]:
    """(exit status, wall s, peak RSS MiB of the command, last stderr line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "LLMFT_NO_PROGRESS": "1"})
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return proc.returncode, wall, usage.ru_maxrss / 1024, (err.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=3.0, help="unpacked size of each bomb")
    args = parser.parse_args()
    llmft = str(Path(sys.executable).with_name("llmft"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lenient = tmp / "lenient.yaml"
        lenient.write_text("max_compression_ratio: 100000\n")
        for name, byte in (("one line", b"a"), ("newlines", b"\n")):
            bomb = tmp / f"{name.replace(' ', '_')}.zip"
            write_bomb(bomb, byte, args.gib)
            packed = bomb.stat().st_size / 2**20
            for limits, extra in (("default", []), ("max_compression_ratio 100000", ["--config", str(lenient)])):
                out = tmp / f"out-{len(rows)}.jsonl"
                code, wall, rss, last = run([llmft, "data", "convert", "unnatural-instructions", str(bomb),
                                             "--out", str(out), *extra])
                rows.append((name, packed, limits, code, wall, rss, last.replace(str(tmp) + "/", "")))
                print(rows[-1], flush=True)
    info = machine_info()
    lines = ["## Zip bombs", "",
             f"Command: `python bench/zip_bombs.py --gib {args.gib:g}`  ",
             f"Date: {info['date']}  ",
             f"Machine: {info['cores']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Python {info['python']}, "
             f"bf16 ISA: {', '.join(info['bf16_isa']) or 'none'}; load average after the run {loadavg()[:2]}  ",
             f"Each bomb is one `core_data.jsonl` member of {args.gib:g} GiB; peak RSS is the command's own (wait4). "
             "Before the limits (issue 14) the one-line bomb took 6.3 GB of RAM before failing and the newline "
             "bomb ran for minutes.", "",
             "| bomb | zip MiB | limits | exit | wall s | peak RSS MiB | message |", "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {n} | {p:.1f} | {lim} | {c} | {w:.1f} | {r:.0f} | {m} |" for n, p, lim, c, w, r, m in rows]
    update_section("## Zip bombs", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
