"""Parameter counts of every backbone arch, with a linear classifier head.

Models are built on the meta device, so even Huge at pixel tokens costs no
memory. The paper's Table 7 counts (patch 16, 224 px, 1000 classes) are
printed beside ours.

    python tools/analysis/get_params.py
    python tools/analysis/get_params.py --img-size 224 --patch-sizes 16 8 4 2 1
"""
import argparse

import torch

from patchscale_mm.models import Adventurer, PatchViT

FAMILIES = {'deit': PatchViT, 'adventurer': Adventurer}
ARCHS = ('t', 's', 'b', 'l', 'h')
# Paper Table 7, millions of parameters at patch 16 with a 1000-class head.
PAPER_PARAMS_M = {
    'deit': dict(t=5, s=22, b=86, l=304, h=631),
    'adventurer': dict(t=12, s=44, b=99, l=346, h=759),
}


def count_params(family: str, arch: str, img_size: int, patch_size: int,
                 num_classes: int = 1000) -> int:
    """Backbone parameters plus a ``Linear(embed_dims, num_classes)`` head."""
    with torch.device('meta'):
        backbone = FAMILIES[family](
            arch=arch, img_size=img_size, patch_size=patch_size)
    head = backbone.embed_dims * num_classes + num_classes if num_classes else 0
    return sum(p.numel() for p in backbone.parameters()) + head


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
