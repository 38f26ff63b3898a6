"""Process states read from Linux's /proc, for the tests that kill a parent
and check what became of its children."""
from pathlib import Path

HAS_PROC = Path('/proc/self/stat').exists()


def _stat_fields(pid: int) -> list:
    # The command name in parentheses may hold spaces: split after it.
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()


def has_exited(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaps)."""
    try:
        return _stat_fields(pid)[0] == 'Z'
    except FileNotFoundError:
        return True


def children(pid: int, argument: str) -> list:
    """The pids of ``pid``'s children with ``argument`` on their command
    line."""
    found = []
    for proc in Path('/proc').glob('[0-9]*'):
        try:
            parent = int(_stat_fields(int(proc.name))[1])
            args = (proc / 'cmdline').read_bytes().split(b'\0')
        except OSError:  # exited meanwhile
            continue
        if parent == pid and argument.encode() in args:
            found.append(int(proc.name))
    return found
