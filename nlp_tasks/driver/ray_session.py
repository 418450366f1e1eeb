"""Joining a Ray cluster, or starting an embedded local one for the run and stopping it fast."""

from __future__ import annotations

import os
import sys

from nlp_tasks.driver.logs import ray_console_quiet

EMBEDDED_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}
"""The embedded Ray keeps an idle worker process for the run: by default it kills one after a second idle, and on a
machine whose cores the actors keep busy a new one takes about 2 s to start, which the last write of a run waited
for (1,000 rows: the last commit 2.35 s after the last actor call in one run of two; 0.07-0.08 s kept)."""


def start_ray() -> bool:
    """Join the cluster named by RAY_ADDRESS (or the one running this job), else start an embedded local Ray.

    The embedded Ray starts its dashboard only for a person at a terminal: it costs a second or two of
    every run's start. Where Ray's own lines are kept off the console (logs.quiet_ray_console), so is what Ray's
    driver prints for other processes (quiet_driver). Returns whether this call started Ray (a fixed-size local
    cluster).
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = ray_console_quiet()
    if quiet:
        quiet_driver()
    if "RAY_ADDRESS" in os.environ:
        ray.init(log_to_driver=not quiet)
        return False
    ray.init(address="local", include_dashboard=sys.stderr.isatty(),  # never some other cluster on this machine
             log_to_driver=not quiet, _system_config=EMBEDDED_RAY_SYSTEM_CONFIG)
    return True


def started_by_this_process() -> bool:
    """Whether the Ray this process is connected to is a local one it started (the head node is this process's):
    a cluster of fixed size, which no autoscaler grows. Ray says so only through a private handle (Ray 2.60); where
    it is not found, the cluster is taken as one that may grow."""
    import ray._private.worker

    return bool(getattr(getattr(ray._private.worker, "_global_node", None), "head", False))


def quiet_driver() -> None:
    """Keep off this driver's console what Ray's workers print (an actor's traceback as it dies: `log_to_driver`)
    and the error messages Ray publishes to drivers, which its driver prints from a thread with no switch, prefixed
    "(raylet)" (a task retried, a worker killed): each stays in the log file of the process it comes from, in Ray's
    session folder; an error that stops the run reaches the job as its exception. Ray's debugger silences both with
    a private flag (Ray 2.60); where it is not found, the error messages print."""
    import ray._private.worker

    if hasattr(ray._private.worker, "_worker_logs_enabled"):
        ray._private.worker._worker_logs_enabled = False


def stop_embedded_ray() -> None:
    """Stop the Ray that start_ray started. `ray.shutdown` gives each of its processes a second to exit on SIGTERM,
    and the autoscaler monitor, idle on a local cluster, always takes all of it (1.0 of 1.4 s, Ray 2.60): it is
    killed first. Its handle is private to Ray; where it is not found, the shutdown is only slower."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for monitor in getattr(node, "all_processes", {}).get("monitor", []):
        monitor.process.kill()
        monitor.process.wait()
    ray.shutdown()
