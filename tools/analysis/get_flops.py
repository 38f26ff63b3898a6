"""Parameters and forward FLOPs of every backbone arch at every patch size.

FLOPs come from the analytic model in patchscale_mm.analysis.cost
(multiply-add = 2 FLOPs; linear, conv, attention QK^T/AV and the SSD scan;
element-wise ops left out), parameters from the built model with a linear
classifier head, as in get_params.py.

    python tools/analysis/get_flops.py
    python tools/analysis/get_flops.py --img-size 64 --macs
    python tools/analysis/get_flops.py --check   # analytic vs mmengine's counter

--check compares the analytic forward FLOPs with mmengine's FlopAnalyzer on
tiny models (arch t, 64px): mmengine counts a multiply-add as one flop and
has no handle for scaled_dot_product_attention, so ours are registered.
"""
import argparse
import sys
import warnings

import torch

from patchscale_mm.analysis import cost as cm
from patchscale_mm.models.zoo import ARCHS, FAMILIES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--patch-sizes', type=int, nargs='+',
                        default=[16, 8, 4, 2, 1])
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--scan', choices=cm.FLOP_SCANS, default='chunked',
                        help="SSD scan FLOP convention: 'chunked' (Mamba-2's "
                        "SSD, as mamba-ssm runs it) or 'recurrence' (this "
                        "repo's kernel) (default: chunked)")
    parser.add_argument('--macs', action='store_true',
                        help='print GMACs (the "GFLOPs" of most papers, '
                        'e.g. 17.6 for DeiT-B/16) instead of GFLOPs')
    parser.add_argument('--check', action='store_true',
                        help='cross-check with mmengine on tiny models')
    return parser.parse_args(argv)


def tables(args) -> str:
    unit = 'GMACs' if args.macs else 'GFLOPs'
    scale = 2e9 if args.macs else 1e9
    header = ['| model | ' + ' | '.join(f'p{p}' for p in args.patch_sizes) +
              ' |', '|---' * (len(args.patch_sizes) + 1) + '|']
    flops, params = list(header), list(header)
    for family in FAMILIES:
        for arch in ARCHS:
            settings = [(family, arch, args.img_size, p, args.num_classes)
                        for p in args.patch_sizes]
            flops.append(f'| {family}-{arch} | ' + ' | '.join(
                f'{cm.forward_flops(*s, scan=args.scan) / scale:,.1f}'
                for s in settings) + ' |')
            params.append(f'| {family}-{arch} | ' + ' | '.join(
                f'{cm.count_params(*s) / 1e6:.1f}' for s in settings) + ' |')
    return '\n'.join([
        f'Forward {unit} per image at {args.img_size}px '
        f'({args.num_classes}-class head, scan {args.scan}; '
        'training is 3x):', ''
    ] + flops + [
        '', f'Parameters (M) with a {args.num_classes}-class linear head:', ''
    ] + params)


# Tiny models with several scan chunks: with a single chunk the trace drops
# the chunk-state einsum, whose result then only feeds the unused final state.
CHECKS = (('deit', 't', 64, 4), ('deit', 't', 64, 2), ('adventurer', 't', 64, 4),
          ('adventurer', 't', 64, 2))


def check() -> str:
    """Analytic vs mmengine forward FLOPs of tiny backbones (no head)."""
    scan = cm.SCAN_FLOP_CONVENTION[cm.active_scan('cpu')]
    rows = ['| model | img | patch | analytic GFLOPs | mmengine GFLOPs | '
            'difference |', '|---|---|---|---|---|---|']
    for family, arch, img, p in CHECKS:
        torch.manual_seed(0)
        model = cm.build_backbone(family, arch, img, p)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # tracer warnings
            counted = cm.count_flops_mmengine(model,
                                              torch.randn(1, 3, img, img))
        analytic = cm.forward_flops(family, arch, img, p, 0, scan)
        rows.append(f'| {family}-{arch} | {img} | {p} | {analytic / 1e9:.4f} '
                    f'| {counted / 1e9:.4f} | {analytic / counted - 1:+.4%} |')
    return '\n'.join([
        '', 'Cross-check with mmengine FlopAnalyzer (its MACs x 2; handles '
        f'registered for SDPA and the compiled scan; scan counted {scan}, as '
        'the scan running here computes):', ''
    ] + rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        for p in args.patch_sizes:
            cm.num_patches(args.img_size, p)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(tables(args))
    if args.check:
        print(check())
    return 0


if __name__ == '__main__':
    sys.exit(main())
