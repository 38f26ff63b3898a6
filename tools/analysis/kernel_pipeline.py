"""The scan kernel's hot loops on processors this machine is not: a pipeline model.

Compiles one instruction set's kernel file (``ssd_cpu_{isa}.cpp``) to
assembly with the flags of ``setup.py``, finds the innermost loops of the
forward and backward kernels, follows each loop's common path (a branch is
taken only where it closes the loop: the rare fold of the scale and the loop
exits fall through) and hands that path to ``llvm-mca`` for every ``--cpus``
model. It prints per loop its vector FP ops (FMAs, multiplies, adds), loads,
stores and register-to-register vector copies, and per processor the modeled
cycles per iteration against two FP ops per cycle (two FMA ports). The
forward tile's FP ops are exactly the FMAs the roofline of
``benchmark_scan.py`` counts, so there that ratio is the loop's share of the
kernel's distance from the roofline. A model, not a measurement: llvm-mca
knows each instruction's ports and latency, not caches, clocks or
prefetchers; it lets a kernel's behaviour on, say, an Intel Xeon be reasoned
about on an AMD machine.

    python tools/analysis/kernel_pipeline.py                      # avx512, fp32
    python tools/analysis/kernel_pipeline.py --isa avx2 --cpus skylake znver2
    python tools/analysis/kernel_pipeline.py --dtype double --show-asm

Needs ``llvm-mca`` (LLVM's tools; ``--llvm-mca`` names another binary) and
the compiler that builds the extension.
"""
import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / 'patchscale_mm' / 'ops' / 'csrc'
# setup.py's flags for the kernel files (OpenMP only matters for the
# threads around the loops, not for the loops themselves).
CXXFLAGS = ['-std=c++17', '-O3', '-g0', '-ffp-contract=fast', '-Wno-psabi', '-fopenmp']
DEFAULT_CPUS = {'avx512': ['skylake-avx512', 'icelake-server', 'sapphirerapids'],
                'avx2': ['skylake', 'znver2'],
                'generic': ['x86-64', 'znver2']}
# Itanium mangling of the kernels' element types.
MANGLED = {'float': 'f', 'double': 'd'}

INSTRUCTION = re.compile(r'^\t(?!\.)')
LABEL = re.compile(r'^(\.L\w+):')
JUMP = re.compile(r'^\t(j\w+)\s+(\.L\w+)')
FP_OP = re.compile(r'^\tv?(fn?m(add|sub)\d{3}|mul|add|sub)p[sd]\s')
VECTOR_COPY = re.compile(r'^\tvmov(ap|up)[sd]\s+%[xyz]mm\d+, %[xyz]mm\d+$')
STORE = re.compile(r'^\tv?mov\w*\s+%[xyz]mm\d+, [^%]')


def compile_to_asm(isa, out_dir, cxx):
    """Assembly (AT&T) of ``ssd_cpu_{isa}.cpp``, compiled as setup.py compiles it."""
    from torch.utils.cpp_extension import include_paths
    src = CSRC / f'ssd_cpu_{isa}.cpp'
    if not src.is_file():
        raise SystemExit(f'no kernel file {src.name}: --isa must be avx512, avx2 or generic')
    asm = Path(out_dir) / f'{src.stem}.s'
    cmd = [cxx, *CXXFLAGS, *[f'-I{p}' for p in include_paths()],
           f'-I{sysconfig.get_paths()["include"]}', '-S', '-o', str(asm), str(src)]
    subprocess.run(cmd, check=True)
    return asm.read_text().splitlines()


def function_body(lines, kernel, dtype):
    """The first and last line of ``{kernel}<dtype>`` (fwd_kernel or
    bwd_kernel) in the assembly."""
    name = re.compile(rf'^_ZN\w*{len(kernel)}{kernel}I{MANGLED[dtype]}EEv\w*:$')
    start = next((i for i, line in enumerate(lines) if name.match(line)), None)
    if start is None:
        raise SystemExit(f'{kernel}<{dtype}> not found in the assembly')
    end = next(i for i in range(start, len(lines)) if lines[i].startswith('\t.size'))
    return start, end


def loop_regions(body, labels):
    """Innermost loops as (label, first line, back-edge line): each label's
    nearest backward jump closes a region, and a region with another inside
    it is not innermost."""
    regions = {}
    for j, line in enumerate(body):
        jump = JUMP.match(line)
        if jump and labels.get(jump.group(2), j) < j and jump.group(2) not in regions:
            regions[jump.group(2)] = (labels[jump.group(2)], j)
    return [(label, i, j) for label, (i, j) in regions.items()
            if not any(i <= a and b <= j and (a, b) != (i, j) for a, b in regions.values())]


def common_path(body, labels, start, first, last):
    """Line numbers of the instructions from label ``start`` round to a jump
    back to it, within lines [first, last]; None where the walk leaves them."""
    i, path = labels[start] + 1, []
    while first <= i <= last:
        line = body[i]
        jump = JUMP.match(line)
        if jump:
            op, target = jump.groups()
            if target == start:
                return path
            if op == 'jmp':
                i = labels.get(target, -1) + 1
                continue
        elif INSTRUCTION.match(line):
            path.append(i)
        i += 1
    return None


def innermost_loops(body):
    """The common paths of a function's innermost loops."""
    labels = {m.group(1): i for i, line in enumerate(body) if (m := LABEL.match(line))}
    for label, first, last in loop_regions(body, labels):
        path = common_path(body, labels, label, first, last)
        if path:
            yield [body[i] for i in path]


def loop_roles(isa):
    """What each hot loop of ssd_cpu_kernel.h looks like in one ISA's build:
    {(kernel, FP ops, stores or None): role}, from the file's tile sizes."""
    src = (CSRC / f'ssd_cpu_{isa}.cpp').read_text()
    size = {k: int(v) for k, v in re.findall(r'#define (SSD_\w+) (\d+)', src)}
    rows, vecs, adjoint = size['SSD_TILE_ROWS'], size['SSD_NB_FWD'], size['SSD_NB_BWD']
    tile = rows * vecs
    return {
        ('fwd_kernel', 2 * tile, vecs): f'forward tile ({rows} x {vecs}): r += B w, y += C r',
        ('bwd_kernel', tile, 0): 'sub-checkpoints tile: r += B w',
        ('bwd_kernel', tile, tile): 'states tile: r += B w, r stored',
        ('bwd_kernel', 2 * tile, vecs + tile): 'states tile with y (gated)',
        # its stores depend on how the compiler keeps the rows' dB, dC sums
        ('bwd_kernel', 5 * adjoint, None): f'adjoint, one state row x {adjoint} vectors',
    }


def mca_cycles(path, cpu, llvm_mca, iterations=200):
    """Modeled cycles per iteration of ``path`` on ``cpu``."""
    res = subprocess.run([llvm_mca, '-mtriple=x86_64', f'-mcpu={cpu}',
                          f'-iterations={iterations}'],
                         input='\n'.join(path) + '\n', capture_output=True, text=True)
    found = re.search(r'Total Cycles:\s+(\d+)', res.stdout)
    if res.returncode != 0 or not found:
        first = (res.stderr.strip().splitlines() or ['no output'])[0]
        raise SystemExit(f'llvm-mca -mcpu={cpu} failed: {first}')
    return int(found.group(1)) / iterations


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--isa', choices=sorted(DEFAULT_CPUS), default='avx512')
    parser.add_argument('--dtype', choices=sorted(MANGLED), default='float')
    parser.add_argument('--cpus', nargs='+', default=None,
                        help="llvm-mca processor models (default: the ISA's usual ones)")
    parser.add_argument('--all', action='store_true',
                        help='also the loops of remainders and edge cases (8 FP ops or more)')
    parser.add_argument('--cxx', default='g++')
    parser.add_argument('--llvm-mca', default='llvm-mca')
    parser.add_argument('--show-asm', action='store_true', help="print each loop's path")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cpus = args.cpus or DEFAULT_CPUS[args.isa]
    llvm_mca = shutil.which(args.llvm_mca)
    if llvm_mca is None:
        raise SystemExit(f'{args.llvm_mca} not found: install LLVM (apt install llvm) '
                         'or name the binary with --llvm-mca')
    known = subprocess.run([llvm_mca, '-mtriple=x86_64', '-mcpu=help'], capture_output=True,
                           text=True)
    known = set(re.findall(r'^\s+(\S+)\s+- Select', known.stdout + known.stderr, re.M))
    unknown = [cpu for cpu in cpus if cpu not in known]
    if unknown:  # llvm-mca would model a generic processor in their place
        raise SystemExit(f'{llvm_mca} has no model for {", ".join(unknown)}; '
                         f'it knows: {", ".join(sorted(known))}')
    if shutil.which(args.cxx) is None:
        raise SystemExit(f'{args.cxx} not found: name the C++ compiler with --cxx')
    with tempfile.TemporaryDirectory() as tmp:
        lines = compile_to_asm(args.isa, tmp, args.cxx)
    version = subprocess.run([args.cxx, '--version'], capture_output=True,
                             text=True).stdout.splitlines()[0]
    print(f'{args.isa} kernels, {args.dtype}, compiled by {version}; cycles per iteration '
          'modeled by llvm-mca; bound: FP ops / 2 FMA ports\n')
    roles = loop_roles(args.isa)
    print('| kernel | loop | FP ops | loads | stores | vector copies | '
          + ' | '.join(f'{cpu} cycles (x bound)' for cpu in cpus) + ' |')
    print('|---|---|---|---|---|---|' + '---|' * len(cpus))
    for kernel in ('fwd_kernel', 'bwd_kernel'):
        start, end = function_body(lines, kernel, args.dtype)
        loops = []
        for path in innermost_loops(lines[start:end]):
            fp_ops = sum(bool(FP_OP.match(x)) for x in path)
            stores = sum(bool(STORE.match(x)) for x in path)
            role = roles.get((kernel, fp_ops, stores), roles.get((kernel, fp_ops, None)))
            if role or (args.all and fp_ops >= 8):
                loops.append((role or 'other', path, fp_ops, stores))
        for role, path, fp_ops, stores in sorted(loops, key=lambda v: (v[0] == 'other', -v[2])):
            loads = sum('(' in x and not STORE.match(x) and not x.startswith('\tlea')
                        for x in path)
            copies = sum(bool(VECTOR_COPY.match(x)) for x in path)
            cells = []
            for cpu in cpus:
                cycles = mca_cycles(path, cpu, llvm_mca)
                cells.append(f'{cycles:.1f} ({cycles / (fp_ops / 2):.2f})')
            print(f'| {kernel} | {role} | {fp_ops} | {loads} | {stores} | {copies} | '
                  + ' | '.join(cells) + ' |', flush=True)
            if args.show_asm:
                print('\n'.join(path) + '\n')


if __name__ == '__main__':
    sys.exit(main())
