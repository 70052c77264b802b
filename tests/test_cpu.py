"""The compute-dtype choice (llmft.training.cpu.choose_compute_dtype): forced settings win, CUDA keeps its own test,
the CPU verdict follows the measured rates (fake ones here), is cached per machine key, and the key changes with the
ISA environment that emulates older CPUs."""
from __future__ import annotations

import pytest
import torch

from llmft.training import cpu

CPU = torch.device("cpu")


@pytest.fixture
def fake_probe(monkeypatch, tmp_path):
    """measure_matmul_rates replaced by scripted rates; the cache in a fresh folder."""
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    calls = []

    def script(fp32: float, bf16: float):
        def measure():
            calls.append((fp32, bf16))
            return {"fp32_gflops": fp32, "bf16_gflops": bf16, "threads": 2}
        monkeypatch.setattr(cpu, "measure_matmul_rates", measure)
    return script, calls


def test_forced_settings_win_without_measuring(fake_probe):
    script, calls = fake_probe
    script(100.0, 1.0)
    assert cpu.choose_compute_dtype("true", CPU).to_dict() == {"bf16": True, "reason": "forced", "rates": None}
    assert cpu.choose_compute_dtype("false", CPU).bf16 is False and calls == []


@pytest.mark.parametrize("fp32, bf16, expected", [
    (316.0, 160.0, False),     # AVX512-BF16 without AMX on one Xeon: bf16 at half the fp32 rate
    (57.0, 0.4, False),        # AVX2 only: bf16 emulated
    (50.0, 100.0, True),       # bf16 kernels twice as fast (AMX, or this AMD's AVX512-BF16)
    (50.0, 55.0, False),       # within the margin: autocast's casts would eat the gain
])
def test_cpu_verdict_follows_the_measured_rates_and_is_cached(fake_probe, tmp_path, fp32, bf16, expected):
    script, calls = fake_probe
    script(fp32, bf16)
    first = cpu.choose_compute_dtype("auto", CPU)
    assert (first.bf16, first.reason) == (expected, "measured")
    assert first.rates["bf16_faster"] is expected and first.rates["fp32_gflops"] == fp32
    again = cpu.choose_compute_dtype("auto", CPU)
    assert (again.bf16, again.reason, again.rates) == (expected, "cached", first.rates) and len(calls) == 1
    assert (tmp_path / cpu.DTYPE_CACHE / f"{cpu.machine_key()}.json").is_file()


def test_isa_environment_changes_the_key_and_is_measured_again(fake_probe, monkeypatch):
    script, calls = fake_probe
    script(50.0, 100.0)
    native = cpu.machine_key()
    assert cpu.choose_compute_dtype("auto", CPU).bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.machine_key() != native
    script(57.0, 0.4)
    assert not cpu.choose_compute_dtype("auto", CPU).bf16 and len(calls) == 2
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert cpu.choose_compute_dtype("auto", CPU).reason == "cached" and len(calls) == 2


def test_a_damaged_cache_entry_is_measured_again(fake_probe, tmp_path):
    script, calls = fake_probe
    script(50.0, 100.0)
    path = tmp_path / cpu.DTYPE_CACHE / f"{cpu.machine_key()}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cpu.choose_compute_dtype("auto", CPU).reason == "measured" and len(calls) == 1


def test_cuda_keeps_its_bf16_support_check(fake_probe, monkeypatch):
    script, calls = fake_probe
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert cpu.choose_compute_dtype("auto", torch.device("cuda")).to_dict() == {
        "bf16": True, "reason": "cuda", "rates": None}
    assert calls == []


def test_the_real_probe_measures_both_dtypes_on_a_small_shape():
    rates = cpu.measure_matmul_rates(shape=(16, 32, 48), reps=2)
    assert rates["fp32_gflops"] > 0 and rates["bf16_gflops"] > 0
    assert rates["probe_shape"] == [16, 32, 48] and rates["threads"] == torch.get_num_threads()
