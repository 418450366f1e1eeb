"""A CPU actor keeps the memory its forward passes free: the next pass reuses those pages instead of faulting fresh
ones in (nlp_tasks/models/cpu_memory.py). Each probe is a fresh interpreter, since the setting lasts a process's life."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

PROBE = """
import resource, sys, threading
{setup}
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        blocks = [bytearray(16 << 20) for _ in range(3)]  # zeroed: every page touched, as activations are
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def run(out):
    faults()  # the heap grows to the pass's size once
    out.append(faults())
out = []
if {in_thread}:
    thread = threading.Thread(target=run, args=(out,))
    thread.start()
    thread.join()
else:
    run(out)
print(out[0])
"""

KEPT = "from nlp_tasks.models.cpu_memory import keep_freed_memory\nassert keep_freed_memory()"
LOADED = """
from nlp_tasks.config import ComputeConfig, TaskSpec
from nlp_tasks.workers.annotator import load_adapters
load_adapters({{"embedding": TaskSpec.model_validate({{"task": "feature-extraction", "model": {model!r}}})}},
              ComputeConfig(device="cpu"))
"""


def page_faults(setup: str, in_thread: bool) -> int:
    run = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup, in_thread=in_thread)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=120)
    return int(run.stdout.split()[-1])


@pytest.mark.parametrize("in_thread", [False, True], ids=["main thread", "another thread"])
def test_kept_memory_is_reused_where_glibc_defaults_fault_it_in_again(in_thread):
    assert page_faults("", in_thread) > 10_000  # 15 blocks of 16 MiB: 4,096 pages each, unless reused
    assert page_faults(KEPT, in_thread) < 500


def test_an_actor_that_loads_a_model_on_cpu_keeps_its_freed_memory(minilm):
    assert page_faults(LOADED.format(model=minilm), in_thread=True) < 500
