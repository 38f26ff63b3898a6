"""Per-image training memory and FLOPs of PatchViT (DeiT) and Adventurer at
any arch, image size and patch size, beside the paper's Table 6.

    python tools/analysis/estimate_cost.py
    python tools/analysis/estimate_cost.py --models deit-s adventurer-s --img-size 128
    python tools/analysis/estimate_cost.py --measure   # also measure on this machine
    python tools/analysis/estimate_cost.py --models adventurer-t --img-size 448 \
        --patch-sizes 1 --sequence-parallel 1 2 4 8   # memory per rank

Memory is the activation memory a training step keeps for backward, per
image, from an analytic model of the tensors each module saves (attention
through a memory-efficient kernel, so it is linear in the token count);
weights and optimizer state are excluded, as in the paper. MiB = 2^20 bytes.
Precision 'amp' is fp16 autocast as in DeiT's training (matmul activations
2 bytes; residual stream, norms and scan internals fp32); 'fp32' is plain
fp32. Adventurer's scan is this repository's compiled kernel unless --scan
says otherwise. FLOPs count a multiply-add as 2, matmul-class work only
(linear, conv, attention QK^T and AV, the SSD scan); training is 3x forward.
GPU-hours per ImageNet epoch assume the stated peak throughput and model
FLOPs utilisation (MFU).

--measure runs forward passes of the settings with at most
--measure-max-tokens patch tokens on this machine (CPU, with the scan that
patchscale_mm.ops.ssd_scan picks here) and prints the measured
saved-activation bytes beside the analytic model of the same code path, and
the wall time of one forward + backward step.
"""
import argparse
import sys

import torch

from patchscale_mm.analysis import cost as cm
from patchscale_mm.models.zoo import parse_model_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+',
                        default=['deit-b', 'adventurer-b'],
                        help='<family>-<arch>, family deit or adventurer, '
                        'arch t/s/b/l/h (default: deit-b adventurer-b)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--patch-sizes', type=int, nargs='+',
                        default=[16, 8, 4, 2, 1])
    parser.add_argument('--precision', choices=cm.PRECISIONS, default='amp')
    parser.add_argument('--scan', choices=cm.MEMORY_SCANS, default='kernel',
                        help="Adventurer's scan for memory: this repo's "
                        "compiled 'kernel', the PyTorch 'torch' form or "
                        "'mamba_ssm' (default: kernel)")
    parser.add_argument('--flop-scan', choices=cm.FLOP_SCANS,
                        default='chunked',
                        help="SSD scan FLOP convention: 'chunked' (Mamba-2's "
                        "SSD, as mamba-ssm runs it) or 'recurrence' (this "
                        "repo's kernel) (default: chunked)")
    parser.add_argument('--peak-tflops', type=float, default=312.,
                        help='accelerator peak, TFLOP/s (default: A100 fp16 '
                        'dense, 312)')
    parser.add_argument('--mfu', type=float, default=0.33,
                        help='assumed model FLOPs utilisation (default: 0.33)')
    parser.add_argument('--images', type=int, default=1281167,
                        help='images per epoch (default: ImageNet-1k train)')
    parser.add_argument(
        '--sequence-parallel', type=int, nargs='+', metavar='SIZE',
        help='also the activation memory per rank with each image split '
        'over SIZE ranks (sequence_parallel.size), without and with '
        'activation checkpointing')
    parser.add_argument('--measure', action='store_true',
                        help='also measure small settings on this machine')
    parser.add_argument('--measure-max-tokens', type=int, default=256,
                        help='largest patch-token count to measure '
                        '(default: 256)')
    return parser.parse_args(argv)


def _row(cells) -> str:
    return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _table(header, rows) -> str:
    return '\n'.join([_row(header), '|---' * len(header) + '|'] +
                     [_row(r) for r in rows])


def _paper(args, patch, arch_of, key):
    """A Table 6 entry where the setting is the paper's, else '-'."""
    row = cm.PAPER_TABLE6.get(patch)
    if row is None or args.img_size != 224 or arch_of != 'b':
        return '-'
    return row[key]


def _gpu_hours(flops_per_image: float, args) -> float:
    """Accelerator-hours of one epoch at the assumed peak and MFU."""
    return (flops_per_image * args.images /
            (args.peak_tflops * 1e12 * args.mfu * 3600))


def cost_tables(args, models) -> str:
    img, patches = args.img_size, args.patch_sizes
    deits = [m for m in models if m[1] == 'deit']
    advs = [m for m in models if m[1] == 'adventurer']
    # The paper's memory column sits beside the first DeiT-B.
    paper_after = next((i for i, m in enumerate(models)
                        if m[1] == 'deit' and m[2] == 'b'), None)
    header = ['patch', 'tokens']
    for i, (name, _, _) in enumerate(models):
        header.append(f'{name} MiB')
        if i == paper_after:
            header.append('paper MB')
    header += [f'{name} GFLOPs' for name, _, _ in models]
    memory_rows = []
    for p in patches:
        row = [p, cm.num_patches(img, p)]
        for i, (_, family, arch) in enumerate(models):
            mib = cm.activation_bytes(family, arch, img, p, args.precision,
                                      args.scan) / cm.MIB
            row.append(f'{mib:,.0f}')
            if i == paper_after:
                row.append(_paper(args, p, 'b', 'deit_memory_mb'))
        row += [
            f'{cm.forward_flops(f, a, img, p, scan=args.flop_scan) / 1e9:,.1f}'
            for _, f, a in models
        ]
        memory_rows.append(row)
    out = [
        f'Per-image training cost at {img}px: activation memory (MiB, '
        f'precision {args.precision}, Adventurer scan {args.scan}) and '
        f'forward GFLOPs (multiply-add = 2, scan {args.flop_scan})' +
        ('; paper: Table 6 (DeiT-B, fp16 + FlashAttention).'
         if paper_after is not None else '.'), '',
        _table(header, memory_rows)
    ]

    if deits and advs:
        (deit, _, deit_arch), (adv, _, adv_arch) = deits[0], advs[0]
        same_arch = deit_arch if deit_arch == adv_arch else None
        rows = []
        for p in patches:
            fd = cm.training_flops('deit', deit_arch, img, p,
                                   scan=args.flop_scan)
            fa = cm.training_flops('adventurer', adv_arch, img, p,
                                   scan=args.flop_scan)
            paper_d = _paper(args, p, same_arch, 'deit_hours')
            paper_a = _paper(args, p, same_arch, 'adv_hours')
            paper_ratio = ('-' if paper_d == '-' else
                           f'{paper_a / paper_d:.2f} ({paper_a} / {paper_d})')
            rows.append([
                p, f'{fa / fd:.2f}', paper_ratio,
                f'{_gpu_hours(fd, args):,.2f}', paper_d,
                f'{_gpu_hours(fa, args):,.2f}', paper_a
            ])
        out += [
            '', f'{adv} / {deit} training cost: our FLOPs ratio beside the '
            "paper's A100 GPU-hours ratio; GPU-hours per epoch of "
            f'{args.images:,} images at {args.peak_tflops:g} TFLOP/s and '
            f'MFU {args.mfu:g}.', '',
            _table([
                'patch', 'FLOPs ratio', 'paper GPU-h ratio', f'{deit} GPU-h',
                'paper', f'{adv} GPU-h', 'paper'
            ], rows)
        ]
    return '\n'.join(out)


def sequence_parallel_table(args, models) -> str:
    """Per-rank activation memory per image at each sequence-parallel
    size, without / with activation checkpointing."""
    sizes = args.sequence_parallel
    rows = []
    for name, family, arch in models:
        for p in args.patch_sizes:
            row = [name, p, f'{cm.num_patches(args.img_size, p) + 1:,}']
            for size in sizes:
                row.append(' / '.join(
                    f'{cm.sequence_parallel_activation_bytes(family, arch, args.img_size, p, size, args.precision, args.scan, cp) / cm.MIB:,.0f}'  # noqa: E501
                    for cp in (False, True)))
            rows.append(row)
    return '\n'.join([
        '', f'Sequence parallelism at {args.img_size}px: activation MiB per '
        f'rank and image, without / with activation checkpointing '
        f'(precision {args.precision}).', '',
        _table(['model', 'patch', 'tokens'] +
               [f'size {size}' for size in sizes], rows)
    ])


def measure_table(args, models) -> str:
    scan = cm.active_scan('cpu')
    rows = []
    for name, family, arch in models:
        for p in args.patch_sizes:
            tokens = cm.num_patches(args.img_size, p)
            if tokens > args.measure_max_tokens:
                continue
            torch.manual_seed(0)
            model = cm.build_backbone(family, arch, args.img_size, p)
            measured = cm.measure_activation_bytes(model, args.img_size,
                                                   args.precision)
            analytic = cm.activation_bytes(family, arch, args.img_size, p,
                                           args.precision, scan)
            step = cm.measure_step_time(model, args.img_size, 1,
                                        args.precision)
            rows.append([
                name, p, tokens, f'{measured / cm.MIB:,.1f}',
                f'{analytic / cm.MIB:,.1f}',
                f'{analytic / measured - 1:+.1%}', f'{step:.2f}'
            ])
    if not rows:
        return (f'\nNothing to measure: every setting has more than '
                f'{args.measure_max_tokens} tokens (--measure-max-tokens).')
    amp = ' (bf16 autocast on CPU)' if args.precision == 'amp' else ''
    return '\n'.join([
        '', f'Measured on this machine, precision {args.precision}{amp}, '
        f'scan {scan}: saved activations per image vs the analytic model of '
        'the same code path, and one forward + backward step at batch 1.', '',
        _table([
            'model', 'patch', 'tokens', 'measured MiB', 'analytic MiB',
            'difference', 'step s'
        ], rows)
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        models = [(name, *parse_model_name(name)) for name in args.models]
        for _, family, arch in models:
            cm.model_dims(family, arch)
        for p in args.patch_sizes:
            cm.num_patches(args.img_size, p)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.sequence_parallel and min(args.sequence_parallel) < 1:
        print('error: --sequence-parallel sizes must be at least 1',
              file=sys.stderr)
        return 2
    print(cost_tables(args, models))
    if args.sequence_parallel:
        print(sequence_parallel_table(args, models))
    if args.measure:
        print(measure_table(args, models))
    return 0


if __name__ == '__main__':
    sys.exit(main())
