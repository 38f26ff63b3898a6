"""Parameter counts of every backbone arch, with a linear classifier head.

Models are built on the meta device, so even Huge at pixel tokens costs no
memory. The paper's Table 7 counts (patch 16, 224 px, 1000 classes) are
printed beside ours.

    python tools/analysis/get_params.py
    python tools/analysis/get_params.py --img-size 224 --patch-sizes 16 8 4 2 1
    # per component (backbone, neck, heads) of whole configs
    python tools/analysis/get_params.py --configs configs/seg/*_upernet_*.py
"""
import argparse
import importlib
from typing import Dict

import torch
from mmengine.registry import init_default_scope

# The counting lives in the analysis package, shared with get_flops.py.
from patchscale_mm.analysis.cost import count_params
from patchscale_mm.apis.config import load_config
from patchscale_mm.models.zoo import ARCHS, FAMILIES

REGISTRIES = dict(mmpretrain='mmpretrain.registry', mmseg='mmseg.registry',
                  mmdet='mmdet.registry')

# Paper Table 7, millions of parameters at patch 16 with a 1000-class head.
PAPER_PARAMS_M = {
    'deit': dict(t=5, s=22, b=86, l=304, h=631),
    'adventurer': dict(t=12, s=44, b=99, l=346, h=759),
}

__all__ = ['ARCHS', 'FAMILIES', 'PAPER_PARAMS_M', 'count_params', 'config_params']


def config_params(path: str) -> Dict[str, int]:
    """Parameters of each part of the model a config builds (its top-level
    submodules: backbone, neck, decode_head, auxiliary_head, ...), built on
    the meta device."""
    cfg = load_config(path)
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(REGISTRIES[cfg.default_scope]).MODELS
    model_cfg = cfg.model.copy()
    model_cfg.backbone.pop('init_cfg', None)  # no checkpoint to read
    with torch.device('meta'):
        model = registry.build(model_cfg)
    return {name: sum(p.numel() for p in child.parameters())
            for name, child in model.named_children()
            if any(True for _ in child.parameters())}


def print_config_params(paths):
    for path in paths:
        parts = config_params(path)
        listed = ', '.join(f'{k} {v / 1e6:.2f}M' for k, v in parts.items())
        print(f'{path}: {listed}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument(
        '--patch-sizes', type=int, nargs='+', default=[16, 8, 4, 2, 1])
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument(
        '--configs', nargs='+', help='count the parts of these configs\' '
        'models instead')
    args = parser.parse_args()
    if args.configs:
        return print_config_params(args.configs)

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
