"""What this node's CPU runs natively, asked of the node itself.

A cluster mixes instance types (AVX2 only; AVX-512 with VNNI; BF16; AMX), so every kernel path is chosen in the
actor, on its node, never on the driver. The answers come from the libraries that run the kernels, so that their
own caps emulate an older CPU faithfully: PyTorch's vector capability honours `ATEN_CPU_CAPABILITY`, oneDNN's
bfloat16 support `ONEDNN_MAX_CPU_ISA` (`ONEDNN_MAX_CPU_ISA=AVX2` makes an AVX-512 BF16 machine answer as an
AVX2 one). The flags (VNNI, AMX) are the kernel's, from /proc/cpuinfo.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                 "OV_CPU_MAX_ISA": "AVX2"}}
"""Environments that make oneDNN, PyTorch and MKL answer and run as on an older CPU (`avx2`: no AVX-512, VNNI or
native bfloat16), for tests and benchmarks of what such a node does, on a newer machine."""

FLAGS = {"avx512_vnni": "VNNI", "avx_vnni": "VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}
"""The /proc/cpuinfo flags that decide a kernel path, and the name each is shown by."""


@functools.cache
def cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags, from /proc/cpuinfo (elsewhere: platform's name, no flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU", frozenset()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name") or platform.processor() or "unknown CPU", frozenset(fields.get("flags", "").split())


def bfloat16_native() -> bool:
    """Whether oneDNN runs bfloat16 matrix products natively here (AVX-512 BW/VL/DQ, or AVX-NE-CONVERT); where not,
    PyTorch still runs bfloat16, converting to float32 inside its plain kernels."""
    import torch

    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe() -> str:
    """One line naming this node's CPU as the kernels see it: `AMD EPYC (AVX512; VNNI, BF16)`."""
    import torch

    name, flags = cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    extras = sorted({shown for flag, shown in FLAGS.items()
                     if flag in flags and (capability == "AVX512" or not flag.startswith("avx512"))})
    if not bfloat16_native():
        extras = [extra for extra in extras if extra != "BF16"]
    return f"{name} ({capability}{'; ' + ', '.join(extras) if extras else ''})"
