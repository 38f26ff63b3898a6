"""Registers, spilled stack and shared memory of the Triton scan's kernels, compiled
for a GPU architecture on a machine without a GPU.

Triton compiles ahead of time for a named target (ptxas and cuobjdump come
with Triton's NVIDIA backend), so the resource use that decides a kernel's
speed can be read before any GPU time is spent: a kernel that spills (stack
above zero) or needs most of an SM's shared memory runs far below its
arithmetic. Each row is one kernel of ``patchscale_mm.ops.ssd_triton`` at one
launch configuration, at Adventurer's mixer sizes (d_state and headdim 64)::

    python tools/analysis/triton_resources.py --arch 90 --configs 64:4:ieee 32:4:tf32:3

Without ``--configs`` it compiles the launch each precision uses
(``ssd_triton.BLOCK_LAUNCH``).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from patchscale_mm.ops import ssd_triton

PRECISIONS = ssd_triton.PRECISIONS


def parse_config(text: str):
    """'BT:warps:precision[:stages]' -> (64, 4, 'ieee', 3); stages default to
    Triton's 3."""
    parts = text.split(':')
    if (len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[:2] + parts[3:])
            or parts[2] not in PRECISIONS):
        raise argparse.ArgumentTypeError(
            f'config {text!r}: expected BT:warps:precision[:stages], e.g. 64:4:ieee:1, with '
            f'precision one of {", ".join(PRECISIONS)}')
    return int(parts[0]), int(parts[1]), parts[2], int(parts[3]) if len(parts) == 4 else 3


# Shared memory a block may use, KiB (CUDA's per-block opt-in maximum).
SHARED_LIMIT_KIB = {80: 163, 86: 99, 87: 163, 89: 99, 90: 227, 100: 227, 120: 99}


def kernels(bt: int, precision: str, dstate: int, headdim: int, with_z: bool):
    """(name, jit function, constexpr arguments) of every kernel of one call
    with ``D`` (as Adventurer's mixer, whose gate is its norm's, not the
    scan's: ``with_z`` False)."""
    common = dict(BT=bt, BN=max(16, dstate), PREC=precision, HAS_Z=with_z)
    yield 'pass_states', ssd_triton._pass_states_kernel, dict(
        HAS_FIRST=True, HAS_LAST=True, REVERSE=True, BLOCK=min(1024, dstate * headdim))
    yield 'chunk_states (B, dt x)', ssd_triton._chunk_states_kernel, dict(
        GRAD=False, BP=min(64, headdim), **common)
    yield 'chunk_states (dy)', ssd_triton._chunk_states_kernel, dict(
        GRAD=True, BP=min(64, headdim), **common)
    yield 'chunk_outputs', ssd_triton._chunk_outputs_kernel, dict(
        HAS_D=True, BP=headdim, **common)
    for later in (True, False):
        yield f'chunk_grads ({"later" if later else "earlier"} rows)', \
            ssd_triton._chunk_grads_kernel, dict(ROWS_LATER=later, HAS_D=True, BP=headdim,
                                                 **common)


def compile_usage(fn, constexprs: dict, warps: int, stages: int, arch: int, cuobjdump: str):
    """Compiles ``fn`` for sm_<arch>; returns (registers, stack bytes, shared
    bytes, seconds)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = fn.arg_names
    # Pointers to fp32; sizes as a launch types them below 2**31.
    signature = {n: 'constexpr' if n in constexprs else '*fp32' if n.endswith('_ptr')
                 else 'i32' for n in names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(names.index(k),): v for k, v in constexprs.items()})
    start = time.time()
    compiled = triton.compile(src, target=GPUTarget('cuda', arch, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    seconds = time.time() - start
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(compiled.asm['cubin'])
        f.flush()
        usage = subprocess.run([cuobjdump, '-res-usage', f.name], capture_output=True,
                               text=True, check=True).stdout
    regs = int(re.search(r'REG:(\d+)', usage).group(1))
    stack = int(re.search(r'STACK:(\d+)', usage).group(1))
    return regs, stack, compiled.metadata.shared, seconds


def find_cuobjdump():
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin',
                        'cuobjdump')
    return path if os.access(path, os.X_OK) else None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', type=int, default=90,
                        help='compute capability x 10: 80 (A100), 90 (H100/H200)')
    parser.add_argument('--configs', type=parse_config, nargs='+',
                        default=[(bt, warps, precision, stages) for precision, (bt, warps, stages)
                                 in ssd_triton.BLOCK_LAUNCH.items()],
                        help='launch configurations BT:warps:precision[:stages] (default: '
                        "the scan's own, per precision)")
    parser.add_argument('--dstate', type=int, default=64)
    parser.add_argument('--headdim', type=int, default=64)
    parser.add_argument('--with-z', action='store_true',
                        help='the scan gated by z (default: without, as Adventurer calls it)')
    parser.add_argument('--only', default=None, help='kernels whose name contains this')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ok, reason = ssd_triton.triton_available()
    if not ok:
        sys.exit(f'triton_resources: Triton is not available ({reason})')
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        sys.exit("triton_resources: cuobjdump not found in Triton's NVIDIA backend; "
                 'this needs a Triton built with it (the CUDA wheels are)')
    limit = SHARED_LIMIT_KIB.get(args.arch)
    print(f'sm_{args.arch}, d_state {args.dstate}, headdim {args.headdim}, D, '
          f'{"z" if args.with_z else "no z"}, Triton {ssd_triton.triton.__version__}; '
          f'shared memory per block up to {limit} KiB ("over": cannot launch)\n')
    print('| kernel | BT | warps | stages | precision | registers | spilled stack B | '
          'shared KiB | compile s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for bt, warps, precision, stages in args.configs:
        for name, fn, constexprs in kernels(bt, precision, args.dstate, args.headdim,
                                            args.with_z):
            if args.only and args.only not in name:
                continue
            regs, stack, shared, seconds = compile_usage(fn, constexprs, warps, stages,
                                                         args.arch, cuobjdump)
            over = ' over' if limit and shared > limit * 1024 else ''
            print(f'| {name} | {bt} | {warps} | {stages} | {precision} | {regs} | {stack} | '
                  f'{shared / 1024:.0f}{over} | {seconds:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
