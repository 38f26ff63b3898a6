"""Run a module as a child process that exits when its parent does.

    python -m patchscale_mm.apis.lifeline patchscale_mm.train cfg.py ...

started with ``stdin=subprocess.PIPE`` by a parent that never writes to it.
The child watches its stdin: when the parent exits for any reason (a normal
end, Ctrl-C, ``kill``, even ``kill -9``) the OS closes the pipe's write end,
the read returns end-of-file and the child exits at once. A training run
left behind would otherwise keep writing checkpoints into a work dir that a
rerun of the parent resumes from, two writers on one run.

A pipe, unlike Linux's ``PR_SET_PDEATHSIG``, works on every platform and has
no race between the fork and the watch being set up: a parent that is
already gone leaves a pipe that reads end-of-file straight away.
"""
import os
import runpy
import sys
import threading


def exit_when_closed(fd: int, exit_code: int = 1) -> threading.Thread:
    """Ends this process (without cleanup, as a kill would) once ``fd``
    reads end-of-file."""

    def watch():
        # os.read on the raw descriptor: a daemon thread blocked inside
        # sys.stdin's buffered reader would hold its lock at interpreter
        # shutdown and abort the normal exit.
        while os.read(fd, 4096):
            pass
        os._exit(exit_code)

    watcher = threading.Thread(target=watch, name='lifeline', daemon=True)
    watcher.start()
    return watcher


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit('usage: python -m patchscale_mm.apis.lifeline '
                         'MODULE [ARGS...] (with stdin a pipe from the '
                         'parent)')
    module, *args = argv
    exit_when_closed(sys.stdin.fileno())
    sys.argv = [module, *args]
    runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
    main()
