"""The output's lease at the store level, on a real local folder, without Ray or a model: when a holder counts as
alive, and that a holder finds out at its next commit that another run took the output over."""

from __future__ import annotations

import os
import socket
import time

import pytest
from fsspec.implementations.local import LocalFileSystem
from helpers import lease_file

from nlp_tasks.output.lease import Lease, LeaseLost, holder_alive


def test_a_holder_is_alive_until_its_lease_expires_wherever_it_runs():
    later, earlier = time.time() + 60, time.time() - 1
    elsewhere = {"host": "another-host", "pid": 1}
    assert holder_alive({**elsewhere, "expires_at": later})
    assert not holder_alive({**elsewhere, "expires_at": earlier}), "a lease from another host that expired"
    here = {"host": socket.gethostname(), "pid": os.getpid()}
    assert holder_alive({**here, "expires_at": later})
    assert not holder_alive({**here, "expires_at": earlier}), "a live process whose lease expired"


def test_a_commit_with_under_half_the_ttl_left_finds_the_output_taken_over(tmp_path):
    """check() before a commit renews a lease with under TTL/2 left; the renewal sees a higher-numbered lease (a
    run that took the output over) and stops this one. The heartbeat (every TTL/4) has not beaten yet."""
    filesystem, folder = LocalFileSystem(), str(tmp_path / "__manifest")
    lease = Lease(filesystem, folder, ttl_s=600)
    lease.acquire()
    try:
        lease.check()  # a full TTL left: nothing to do
        lease_file(tmp_path, lease.number + 1, expires_at=time.time() + 600)
        lease.expires_at = time.time() + 200  # under half the TTL left
        with pytest.raises(LeaseLost, match="expired or was taken by another run"):
            lease.check()
    finally:
        lease.release()


def test_a_run_taking_the_output_removes_the_expired_leases_before_it(tmp_path):
    filesystem, folder = LocalFileSystem(), str(tmp_path / "__manifest")
    for number in (1, 2):
        lease_file(tmp_path, number, expires_at=time.time() - 1)
    lease = Lease(filesystem, folder)
    lease.acquire()
    try:
        assert lease.number == 3
        assert sorted(path.name for path in (tmp_path / "__manifest").iterdir()) == ["lease-00000003.json"]
    finally:
        lease.release()
    assert not list((tmp_path / "__manifest").iterdir())
