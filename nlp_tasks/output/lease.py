"""One writer per output at a time: a lease in the output folder, renewed by a heartbeat, expiring with its holder.

Leases are numbered files, `__manifest/lease-<n>.json`; the one with the highest number is the
current lease. A run takes the output by creating the next number exclusively (`storage.
create_exclusive`): of two runs racing for it, exactly one succeeds. It may only do so when
there is no lease, or the current one has expired (its holder stopped renewing: it died), or its holder
ran on this host and its process is gone.
The holder rewrites its own file every TTL/4 with a new expiry, and before every commit makes
sure that its lease is still the current one and not about to expire; a holder that finds a
higher number has lost the output and stops before writing anything more.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from nlp_tasks.errors import UserError
from nlp_tasks.output.storage import TornFile, create_exclusive, dump, read_json, write_atomic

LEASE_TTL_S = 120.0
"""How long a lease lives without renewal; a dead holder's output is free again after this."""
LEASE_NAME = re.compile(r"lease-(\d{8})\.json$")


class LeaseHeld(UserError):
    """Another run holds the output; the message names it."""


class LeaseLost(Exception):
    """This run's lease expired or was taken over; it must not write to the output any more."""


def holder_alive(holder: dict) -> bool:
    """A lease is live until it expires, unless its holder ran on this host and its process is gone."""
    if holder.get("expires_at", 0) <= time.time():
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        pass
    return True


class Lease:
    """This run's claim on an output folder."""

    def __init__(self, filesystem: Any, folder: str, ttl_s: float = LEASE_TTL_S):
        self.filesystem = filesystem
        self.folder = folder
        self.ttl_s = ttl_s
        self.owner = {"run": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
                      "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.number: int | None = None
        self.expires_at = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lock = threading.Lock()
        self.lost: str | None = None

    def _path(self, number: int) -> str:
        return f"{self.folder}/lease-{number:08d}.json"

    def _numbers(self) -> list[int]:
        if not self.filesystem.exists(self.folder):
            return []
        names = self.filesystem.ls(self.folder, detail=False)
        return sorted(int(match.group(1)) for name in names if (match := LEASE_NAME.search(name)))

    def _content(self) -> bytes:
        return dump({**self.owner, "expires_at": self.expires_at,
                     "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))})

    def acquire(self) -> None:
        """Take the output, or raise LeaseHeld naming the live holder."""
        while True:
            numbers = self._numbers()
            current = numbers[-1] if numbers else 0
            if current:
                try:
                    holder = read_json(self.filesystem, self._path(current))
                except FileNotFoundError:
                    continue  # released meanwhile: look again
                except TornFile:
                    holder = {"expires_at": 0}
                if holder_alive(holder):
                    raise LeaseHeld(
                        f"run {holder.get('run')} (host {holder.get('host')}, pid {holder.get('pid')}, started "
                        f"{holder.get('started_at')}) is writing to this output; its lease runs until "
                        f"{holder.get('expires')} unless renewed")
            self.expires_at = time.time() + self.ttl_s
            if create_exclusive(self.filesystem, self._path(current + 1), self._content()):
                self.number = current + 1
                break
        for number in numbers:  # expired leases of dead runs
            self.filesystem.rm(self._path(number))
        self._heartbeat = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLost:
                return
            except OSError:
                continue  # a storage hiccup: the next beat or commit tries again, well before expiry

    def renew(self) -> None:
        """Extend the lease, after making sure it is still this run's."""
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            numbers = self._numbers()
            if self.number not in numbers or numbers[-1] != self.number or time.time() >= self.expires_at:
                self.lost = (f"this run's lease on the output (lease-{self.number:08d}) expired or was taken by "
                             "another run; stopping before writing anything more")
                raise LeaseLost(self.lost)
            self.expires_at = time.time() + self.ttl_s
            write_atomic(self.filesystem, self._path(self.number), self._content())

    def check(self) -> None:
        """Before a commit: raise LeaseLost unless the lease is this run's and has well over a TTL/2 left."""
        if self.lost:
            raise LeaseLost(self.lost)
        if self.expires_at - time.time() < self.ttl_s / 2:
            self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            if self.number is not None and not self.lost:
                try:
                    self.filesystem.rm(self._path(self.number))
                except FileNotFoundError:  # removed by hand, or with the folder: nothing is held any more
                    pass
            self.number = None
