"""Which precision the engine really trains in: bf16 on a CPU needs native bf16, else it trains in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deepseek_workers.training.engine import cpu_has_native_bf16, precision_for

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V1, True), ("processor\t: 0\n", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native


def test_unreadable_cpuinfo_counts_as_no_native_bf16(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_bf16_on_a_cpu_without_it_trains_in_fp32_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    fallback = precision_for("bf16", cpu, native_cpu_bf16=False)
    assert (fallback.name, fallback.dtype, fallback.requested) == ("fp32", None, "bf16")
    assert "no native bf16" in caplog.text
    native = precision_for("bf16", cpu, native_cpu_bf16=True)
    assert (native.name, native.dtype, native.requested) == ("bf16", torch.bfloat16, "")
    with native.autocast(cpu):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    # fp16 is an explicit choice (its GradScaler path is what it is for): kept on any CPU.
    assert precision_for("fp16", cpu, native_cpu_bf16=False).dtype == torch.float16
    assert precision_for("fp32", cpu).dtype is None
