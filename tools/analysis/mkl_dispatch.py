"""Run a command with oneMKL on the code path it takes on another vendor's CPU.

oneMKL, torch's BLAS on x86, picks its kernels by vendor: on an Intel CPU
with AVX-512 its AVX-512 kernels, on an AMD CPU its AVX2 kernels whatever the
AMD CPU supports. The two block a matmul differently, so an fp32 product sums
in another order and ends in other bits, and a test whose tolerance came from
one machine's rounding luck fails on the other vendor's machines. This tool
puts either path on whichever x86 machine runs it:

    python tools/analysis/mkl_dispatch.py intel -- python -m pytest tests/test_fused_cpu.py
    python tools/analysis/mkl_dispatch.py amd -- python tools/analysis/benchmark_scan.py
    python tools/analysis/mkl_dispatch.py --check

``intel``: on a non-Intel CPU a preloaded library answers oneMKL's vendor
check (``mkl_serv_intel_cpu_true``) with yes, so it takes the Intel paths its
CPU features allow; on an Intel CPU nothing changes. ``amd``: oneMKL limited
to AVX2 (``MKL_ENABLE_INSTRUCTIONS=AVX2``), the path it takes on AMD CPUs.
Before running the command the tool checks that the two modes really give
different bits for one fp32 matmul (where the CPU has AVX-512; without it
both vendors get the AVX2 path and the modes agree), so a torch whose oneMKL
cannot be interposed is a one-line error rather than a silent no-op.

Only oneMKL's choice moves: oneDNN (bf16 matmuls, convolutions) and this
project's kernels choose by CPU features, not vendor, and instructions a CPU
lacks (AMX on AMD) cannot be had. Needs a C compiler (``$CC`` or ``cc``) for
``intel`` on a non-Intel CPU.
"""
import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ('intel', 'amd')
# Settings that fix oneMKL's choice and would override either mode.
MKL_CHOICE_VARS = ('MKL_ENABLE_INSTRUCTIONS', 'MKL_CBWR')
VENDOR_CHECK_SOURCE = 'int mkl_serv_intel_cpu_true(void) { return 1; }\n'
# One fp32 matmul whose bits tell oneMKL's paths apart: inner size not a
# multiple of any kernel's unroll, one thread so the split is fixed.
FINGERPRINT = ('import hashlib, torch\n'
               'torch.set_num_threads(1)\n'
               'g = torch.Generator().manual_seed(0)\n'
               'a, b = torch.randn(300, 777, generator=g), torch.randn(777, 513, generator=g)\n'
               'print(hashlib.sha1((a @ b).numpy().tobytes()).hexdigest())\n')


def last_line(text):
    """A child's error in one line: the last line of its output."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else '(no output)'


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's vendor id and feature flags, from /proc/cpuinfo (Linux)."""
    vendor, flags = '', frozenset()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'vendor_id' and not vendor:
                vendor = value.strip()
            elif key.strip() == 'flags' and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return vendor, flags


def vendor_check_exported():
    """Whether a library torch has loaded exports oneMKL's vendor check, so
    that a preloaded one can answer it (torch's wheels link oneMKL into
    libtorch_cpu and export it; other builds load libmkl_* instead)."""
    import ctypes

    import torch  # noqa: F401  (loads the libraries searched below)
    maps = Path('/proc/self/maps')
    if not maps.exists():
        return False
    libs = {line.split()[-1] for line in maps.read_text().splitlines()
            if line.endswith('.so') or '.so.' in line}
    for lib in sorted(libs):
        if 'mkl' in Path(lib).name or 'torch_cpu' in Path(lib).name:
            try:
                if hasattr(ctypes.CDLL(lib), 'mkl_serv_intel_cpu_true'):
                    return True
            except OSError:
                continue
    return False


def build_vendor_check(out_dir):
    """Compiles the shared library that answers oneMKL's vendor check with Intel."""
    cc = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
    if not cc:
        raise SystemExit('mkl_dispatch intel needs a C compiler: set $CC or install cc/gcc')
    src, lib = Path(out_dir) / 'mkl_intel_cpu.c', Path(out_dir) / 'libmkl_intel_cpu.so'
    if lib.exists():  # built for an earlier child of the same run
        return lib
    src.write_text(VENDOR_CHECK_SOURCE)
    done = subprocess.run([cc, '-shared', '-fPIC', '-O2', '-o', str(lib), str(src)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'mkl_dispatch: {cc} could not build the vendor check: '
                         f'{last_line(done.stderr)}')
    return lib


def neutral_env(base=None):
    """``base`` (default: this process's environment) without the settings
    that fix oneMKL's choice: oneMKL then takes this machine's own path."""
    env = dict(os.environ if base is None else base)
    for name in MKL_CHOICE_VARS:
        env.pop(name, None)
    return env


def dispatch_env(mode, work_dir, base=None):
    """The environment that runs a child with oneMKL on ``mode``'s path.

    ``work_dir`` holds the preloaded library for ``intel`` and must outlive
    the child.
    """
    if mode not in MODES:
        raise SystemExit(f'mkl_dispatch: unknown mode {mode!r}; choose one of {", ".join(MODES)}')
    env = neutral_env(base)
    if mode == 'amd':
        env['MKL_ENABLE_INSTRUCTIONS'] = 'AVX2'
    elif cpu_flags()[0] != 'GenuineIntel':
        preload = [str(build_vendor_check(work_dir))]
        if env.get('LD_PRELOAD'):
            preload.append(env['LD_PRELOAD'])
        env['LD_PRELOAD'] = ' '.join(preload)
    return env


def fingerprint(env):
    """Digest of the fingerprint matmul computed in a child under ``env``."""
    done = subprocess.run([sys.executable, '-c', FINGERPRINT], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'mkl_dispatch: the fingerprint matmul failed: {last_line(done.stderr)}')
    return done.stdout.strip()


def paths_differ(work_dir):
    """(intel digest, amd digest), checked to differ where AVX-512 lets them.

    Raises a one-line error where the CPU has AVX-512 but the Intel mode left
    oneMKL's choice unchanged (its vendor check is not interposable here).
    """
    intel = fingerprint(dispatch_env('intel', work_dir))
    amd = fingerprint(dispatch_env('amd', work_dir))
    _, flags = cpu_flags()
    if 'avx512f' in flags and intel == amd:
        raise SystemExit('mkl_dispatch: oneMKL took the same path in both modes on this AVX-512 '
                         'CPU: this torch does not let its vendor check be interposed')
    return intel, amd


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('mode', nargs='?', choices=MODES,
                        help="oneMKL's path: intel (AVX-512 where the CPU has it) or amd (AVX2)")
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='the command to run, after --')
    parser.add_argument('--check', action='store_true',
                        help="print both modes' fingerprints and whether they differ, run nothing")
    args = parser.parse_args(argv)
    if args.command[:1] == ['--']:
        args.command = args.command[1:]
    if not args.check and (args.mode is None or not args.command):
        parser.error('give a mode and a command (mkl_dispatch.py intel -- CMD ...), or --check')
    return args


def main(argv=None):
    args = parse_args(argv)
    vendor, flags = cpu_flags()
    if vendor != 'GenuineIntel' and not vendor_check_exported():
        raise SystemExit("mkl_dispatch: no library of this torch exports oneMKL's vendor check "
                         '(mkl_serv_intel_cpu_true), so its intel mode cannot work here')
    with tempfile.TemporaryDirectory(prefix='mkl_dispatch_') as work_dir:
        intel, amd = paths_differ(work_dir)
        if args.check:
            print(f'CPU vendor {vendor or "unknown"}, AVX-512: {"avx512f" in flags}')
            print(f'intel path {intel[:12]}, amd path {amd[:12]}: '
                  f'{"different" if intel != amd else "the same"} bits')
            return 0
        if intel == amd:
            print('[mkl_dispatch] no AVX-512 here: oneMKL takes the same path on either vendor',
                  file=sys.stderr)
        print(f'[mkl_dispatch] oneMKL on its {args.mode} path (CPU vendor {vendor or "unknown"})',
              file=sys.stderr, flush=True)
        return subprocess.run(args.command, env=dispatch_env(args.mode, work_dir)).returncode


if __name__ == '__main__':
    sys.exit(main())
