"""Writes Fashion-MNIST datasets in ImageNet, ADE20k or COCO layout.

Classification uses the garments themselves; segmentation and detection use
scenes of garments composited onto canvases, with exact masks and boxes.

    python tools/dataset_converters/make_fashion_datasets.py imagenet data/fmnist_in
    python tools/dataset_converters/make_fashion_datasets.py ade20k data/fmnist_ade \
        --num-train 2000 --num-val 500 --size 32
"""
import argparse

from patchscale_mm.fixtures import (make_ade20k_fixture,
                                    make_coco_fixture,
                                    make_imagenet_fixture)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('format', choices=['imagenet', 'ade20k', 'coco'])
    parser.add_argument('out', help='output folder')
    parser.add_argument(
        '--num-train', type=int, default=None,
        help='training images (default: the whole 60k split for imagenet, '
        '1000 scenes otherwise)')
    parser.add_argument(
        '--num-val', type=int, default=None,
        help='validation images (default: the whole 10k test split for '
        'imagenet, 200 scenes otherwise)')
    parser.add_argument(
        '--size', type=int, default=None,
        help='image side (default 28 for imagenet, 64 for ade20k, 128 for '
        'coco)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--fmnist-root', help='folder of the Fashion-MNIST idx files')
    args = parser.parse_args()

    common = dict(seed=args.seed, fmnist_root=args.fmnist_root)
    if args.format == 'imagenet':
        root = make_imagenet_fixture(args.out, args.num_train, args.num_val,
                                     img_size=args.size or 28, **common)
    else:
        make = make_ade20k_fixture if args.format == 'ade20k' else \
            make_coco_fixture
        size = args.size or (64 if args.format == 'ade20k' else 128)
        root = make(args.out, args.num_train or 1000, args.num_val or 200,
                    canvas_size=(size, size), **common)
    print(f'wrote {args.format} dataset to {root}')


if __name__ == '__main__':
    main()
