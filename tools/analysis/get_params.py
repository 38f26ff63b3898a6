"""Parameter counts of every backbone arch, with a linear classifier head.

Models are built on the meta device, so even Huge at pixel tokens costs no
memory. The paper's Table 7 counts (patch 16, 224 px, 1000 classes) are
printed beside ours.

    python tools/analysis/get_params.py
    python tools/analysis/get_params.py --img-size 224 --patch-sizes 16 8 4 2 1
"""
import argparse

# The counting lives in the analysis package, shared with get_flops.py.
from patchscale_mm.analysis.cost_model import ARCHS, FAMILIES, count_params

# Paper Table 7, millions of parameters at patch 16 with a 1000-class head.
PAPER_PARAMS_M = {
    'deit': dict(t=5, s=22, b=86, l=304, h=631),
    'adventurer': dict(t=12, s=44, b=99, l=346, h=759),
}

__all__ = ['ARCHS', 'FAMILIES', 'PAPER_PARAMS_M', 'count_params']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument(
        '--patch-sizes', type=int, nargs='+', default=[16, 8, 4, 2, 1])
    parser.add_argument('--num-classes', type=int, default=1000)
    args = parser.parse_args()

    patches = ' | '.join(f'p{p}' for p in args.patch_sizes)
    print(f'Parameters (M) at {args.img_size}px with a {args.num_classes}-'
          'class linear head; paper: Table 7 (p16, 224px).\n')
    print(f'| model | {patches} | paper |')
    print('|---' * (len(args.patch_sizes) + 2) + '|')
    for family in FAMILIES:
        for arch in ARCHS:
            counts = ' | '.join(
                f'{count_params(family, arch, args.img_size, p, args.num_classes) / 1e6:.1f}'
                for p in args.patch_sizes)
            print(f'| {family}-{arch} | {counts} | '
                  f'{PAPER_PARAMS_M[family][arch]} |')


if __name__ == '__main__':
    main()
