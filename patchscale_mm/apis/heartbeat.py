"""The heartbeat that names a rank that stops answering.

A collective waiting for a frozen peer only says that it timed out; the
heartbeat says which rank it waited for, and ends the job early instead of
leaving the others waiting.
"""
import logging
import os
import sys
import threading
import time

import torch.distributed as dist

from .distributed import collective_timeout


class Heartbeat:
    """Each rank bumps a counter in the process group's store every
    ``interval`` seconds from a thread, and watches the others' counters.

    A rank that is stopped (SIGSTOP, a frozen node, swapping to death)
    stops its counter; when a counter has not moved for the collective
    timeout, the watching ranks log which rank did not answer and exit, so
    the launcher ends the job instead of it waiting, and the user is told
    whom to look at. A collective that times out first is explained by
    :meth:`describe`.
    """

    PREFIX = 'patchscale/heartbeat/'

    def __init__(self, store, rank: int, world_size: int, timeout: float):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout = timeout
        self.interval = max(0.2, min(5.0, timeout / 10))
        now = time.monotonic()
        self._seen = {r: (None, now) for r in range(world_size)}
        self._store_ok = now
        self._stop = threading.Event()
        self.store.add(self._key(rank), 1)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='patchscale-heartbeat')
        self._thread.start()

    def _key(self, rank: int) -> str:
        return f'{self.PREFIX}{rank}'

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # store gone: the job is ending anyway
                if time.monotonic() - self._store_ok > self.timeout:
                    self._fail(self.describe())
                continue
            silent = self.silent_ranks(self.timeout)
            if silent:
                self._fail(self.describe())

    def _beat(self) -> None:
        self.store.add(self._key(self.rank), 1)
        now = time.monotonic()
        for rank in range(self.world_size):
            if rank == self.rank or not self.store.check([self._key(rank)]):
                continue
            count = self.store.add(self._key(rank), 0)  # a read
            if count != self._seen[rank][0]:
                self._seen[rank] = (count, now)
        self._store_ok = now

    def silent_ranks(self, seconds: float) -> list:
        """Ranks whose heartbeat has not moved for ``seconds``."""
        now = time.monotonic()
        return [r for r, (_, seen) in self._seen.items()
                if r != self.rank and now - seen > seconds]

    def describe(self):
        """One line naming the ranks that stopped answering, or None."""
        now = time.monotonic()
        if now - self._store_ok > 3 * self.interval + 1:
            return ('the process group\'s store (on rank 0, or the launcher'
                    f') did not answer for {now - self._store_ok:.0f} s: '
                    'rank 0 or its node stopped responding')
        silent = self.silent_ranks(3 * self.interval + 1)
        if not silent:
            return None
        ranks = ', '.join(map(str, silent))
        longest = max(now - self._seen[r][1] for r in silent)
        return (f'rank{"s" if len(silent) > 1 else ""} {ranks} did not '
                f'answer for {longest:.0f} s (collective timeout '
                f'{self.timeout:.0f} s, PATCHSCALE_DIST_TIMEOUT): stopped '
                'or frozen; ending the job')

    def _fail(self, message) -> None:
        message = f'error: {message or "a rank stopped answering"}'
        logging.getLogger('mmengine').error(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(1)

    def stop(self) -> None:
        self._stop.set()


_HEARTBEAT = None


def start_heartbeat():
    """A :class:`Heartbeat` for the default process group, or None when not
    distributed."""
    global _HEARTBEAT
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() == 1:
        return None
    from torch.distributed.distributed_c10d import _get_default_store
    _HEARTBEAT = Heartbeat(_get_default_store(), dist.get_rank(),
                           dist.get_world_size(), collective_timeout())
    return _HEARTBEAT


def unresponsive_rank_message():
    """Why a collective failed, if the heartbeat knows: one line naming the
    rank that stopped answering, or None."""
    return _HEARTBEAT.describe() if _HEARTBEAT is not None else None
