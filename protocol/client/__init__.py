"""A small reference client for the Fresh Roots sync protocol.

It keeps what a phone keeps: an offline queue of mutations and a local replica with its
cursor, both in SQLite files, and it syncs with bounded, jittered retries. Tests and load
tests use it; it is also the executable description of how a client should behave.
"""

from protocol.client.client import SyncClient, TransientError
from protocol.client.queue import OfflineQueue
from protocol.client.replica import Replica

__all__ = ["OfflineQueue", "Replica", "SyncClient", "TransientError"]
