"""Process states read from Linux's /proc, for the tests that kill a parent
(or one of its children) and check what became of the others."""
import time
from pathlib import Path

HAS_PROC = Path('/proc/self/task').exists()


def _stat_fields(pid: int) -> list:
    # The command name in parentheses may hold spaces: split after it.
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()


def has_exited(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaps)."""
    try:
        return _stat_fields(pid)[0] == 'Z'
    except FileNotFoundError:
        return True


def still_running_after(pids, seconds: float) -> list:
    """Those of ``pids`` that have not exited within ``seconds``."""
    deadline = time.time() + seconds
    while not all(map(has_exited, pids)) and time.time() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if not has_exited(pid)]


def child_pids(pid: int) -> list:
    """The pids of ``pid``'s children (those started by any of its
    threads)."""
    found = []
    for task in Path(f'/proc/{pid}/task').iterdir():
        found += map(int, (task / 'children').read_text().split())
    return found


def children(pid: int, argument: str) -> list:
    """The pids of ``pid``'s children with ``argument`` on their command
    line."""
    return [child for child in child_pids(pid)
            if argument.encode() in
            Path(f'/proc/{child}/cmdline').read_bytes().split(b'\0')]
