"""What this machine computes fast, from what it reports: CPU flags and GPUs.

bf16 pays off where the hardware multiplies in it natively: NVIDIA GPUs from Ampere on, and
CPUs with AMX (Intel Sapphire Rapids and later) or AVX-512-BF16 (Intel Cooper Lake, AMD
Zen 4 and later). Elsewhere PyTorch emulates bf16 matmuls and they run slower than fp32
(docs/benchmarks.md has the measurements), so `model.dtype: auto` picks fp32 there.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from qpeft.config import ConfigError

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# The flags that decide which kernels a CPU gets; benchmarks print them with every timing.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_flags: frozenset[str]
    gpu: str | None  # the first CUDA device's name

    def native_bf16(self, device: str) -> bool:
        if device.startswith("cuda"):
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return any(flag in self.cpu_flags for flag in NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        flags = " ".join(f for f in REPORTED_FLAGS if f in self.cpu_flags) or "none of note"
        missing = [f for f in REPORTED_FLAGS if f not in self.cpu_flags]
        text = f"CPU {self.cpu_model} (flags: {flags}"
        text += f"; no {' '.join(missing)})" if missing else ")"
        return text + (f"; GPU {self.gpu}" if self.gpu else "")


@cache
def detect() -> Hardware:
    """The CPU's model and flags (Linux /proc/cpuinfo; elsewhere the model only) and the
    first GPU."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return Hardware(cpu_model=model, cpu_flags=flags, gpu=gpu)


# Pins what `auto` means on every process that inherits it, e.g. to compare runs across a
# cluster of mixed CPUs (the test suite pins float32 so its recorded figures hold anywhere).
AUTO_DTYPE_ENV = "QPEFT_AUTO_DTYPE"


def resolve_dtype(requested: str, device: str, hardware: Hardware | None = None) -> str:
    """`auto`: bfloat16 where `device` multiplies in bf16 natively, float32 elsewhere (or
    what $QPEFT_AUTO_DTYPE says); any other value as given."""
    if requested != "auto":
        return requested
    pinned = os.environ.get(AUTO_DTYPE_ENV)
    if pinned:
        if pinned not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"${AUTO_DTYPE_ENV}={pinned}: expected float32, bfloat16 or float16")
        return pinned
    return "bfloat16" if (hardware or detect()).native_bf16(device) else "float32"
