"""The key-value store through which the processes of a torchrun attempt (or of a run without torchrun's agent) find
each other when they set up their process group."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import time
import uuid

import torch.distributed as dist

__all__ = ["attempt_store"]


def attempt_store(timeout: datetime.timedelta, rank: int, world_size: int) -> dist.Store:
    """The key-value store through which the processes of this attempt find each other, holding no keys of an
    earlier attempt.

    Outside torchrun's agent, rank 0 hosts the store at ``MASTER_ADDR:MASTER_PORT``, as with ``init_method="env://"``:
    a store per run. torchrun's agent instead hosts one store for the whole run and keeps it across the restarts of
    ``--max-restarts``, with the keys of the processes of an earlier attempt (their addresses, the counters of the
    group's set-up), which must not be read as the current ones; and its restart count
    (``TORCHELASTIC_RESTART_COUNT``) cannot name the attempt, because only the agent of a failed worker counts a
    restart, not the other machines' agents, whose workers are restarted too. So there rank 0 hosts a fresh store of
    its own (:func:`_fresh_round_store`).
    """
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    agent_store = dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    return _fresh_round_store(agent_store, address, port, timeout, rank, world_size)


_ROUND_STORE_KEY = "returnn/round-store"  # in the agent's store: "<host> <port> <token>" of this attempt's store
_TOKEN_KEY = "returnn/token"  # in this attempt's store: its token


def _fresh_round_store(
    agent_store: dist.Store, address: str, port: int, timeout: datetime.timedelta, rank: int, world_size: int
) -> dist.Store:
    """Rank 0 starts a store on a free port and announces where, with a token of its own, in the agent's store. The
    other ranks may read the announcement of an earlier attempt (until rank 0 overwrote it); that store is gone, or
    (its port taken again) holds another token, so they read the announcement again until they reach the store that
    holds the announced token."""
    if rank == 0:
        # announced as the address by which this machine reaches the agent's store: rank 0 need not run where the
        # store does
        own_address = _address_towards(address, port)
        store = dist.TCPStore(own_address, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        token = uuid.uuid4().hex
        store.set(_TOKEN_KEY, token)
        agent_store.set(_ROUND_STORE_KEY, f"{own_address} {store.port} {token}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        host, round_port, token = agent_store.get(_ROUND_STORE_KEY).decode().split()
        with contextlib.suppress(OSError, dist.DistError):  # the store of an earlier attempt is gone
            # a quiet look first: the store's client logs every failed try
            socket.create_connection((host, int(round_port)), timeout=_PROBE.total_seconds()).close()
            store = dist.TCPStore(host, int(round_port), world_size, is_master=False, timeout=_PROBE)
            if store.get(_TOKEN_KEY).decode() == token:
                store.set_timeout(timeout)
                return store
        if time.monotonic() > deadline:
            raise dist.DistStoreError(
                f"rank {rank}: found no store of this attempt's rank 0 in torchrun's store within "
                f"{timeout.total_seconds():g}s (is rank 0 running?)"
            )
        time.sleep(0.2)


_PROBE = datetime.timedelta(seconds=5)  # how long to try a store that may be gone


def _address_towards(host: str, port: int) -> str:
    """How the machines that reach ``host:port`` (the agent's store) reach this machine: ``host`` itself if it is
    this machine (the connection runs over the loopback), else this machine's end of a connection to it."""
    with socket.create_connection((host, port), timeout=_PROBE.total_seconds()) as connection:
        own = connection.getsockname()[0]
    return host if ipaddress.ip_address(own.split("%")[0]).is_loopback else own
