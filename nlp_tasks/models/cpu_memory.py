"""The actor's heap set for a CPU model's forward passes: memory a pass frees stays mapped for the next one.

glibc gives a block over its mmap threshold its own mapping and unmaps it when freed; it hands the free top of a
heap back to the OS past its trim threshold; and it unmaps a thread's heap that falls empty. A forward pass
allocates and frees activations of megabytes per layer (a token budget's rows times the model's width), so with
the defaults every pass faults in and zeroes fresh pages: system time the CPU does not spend on the model.
Raising the three thresholds keeps those pages in the heap, where the next pass reuses them, in whichever thread
the actor runs its calls; outputs do not change, only where their memory comes from. The actor's resident memory
stays at its peak between calls instead of falling back.

`python -m benchmarks.cpu_memory` times MiniLM's forward passes both ways, on the node's own CPU.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
"""Blocks up to this size come from a heap: the first one glibc accepts (older builds refuse over 32 MiB)."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at a heap's top kept before any is handed back."""
TOP_PAD = 256 << 20
"""Room a heap keeps past its top: more than a thread's heap holds (64 MiB), so an empty one is never unmapped."""


@functools.cache
def keep_freed_memory() -> bool:
    """Raise this process's mmap threshold, then its trim threshold and top pad (glibc's mallopt), once; later calls
    say whether it took. Setting any stops glibc adjusting the first two as blocks are freed, so a trim threshold
    alone would hold the mmap threshold at its 128 KiB start. False where the C library has no mallopt (musl,
    macOS) or refuses the values: its defaults stay."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or not any(mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
