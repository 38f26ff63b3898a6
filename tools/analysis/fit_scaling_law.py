"""Fit the patch-size scaling law (loss = a * p^b, or c + a * p^b) to sweep
results and plot it as in the paper's Figure 1.

    python tools/analysis/fit_scaling_law.py work_dirs/sweep/results.json
    python tools/analysis/fit_scaling_law.py results.json --offset --out law.png
    python tools/analysis/fit_scaling_law.py work_dirs/run/*/vis_data/scalars.json \
        --metric-key test/loss

Inputs are results.json files (a list of records with task, family, patch
and the fitted key), MMEngine vis_data/scalars.json logs (the last logged
value of --metric-key; task/family/patch come from the config.py MMEngine
saves beside it, or from --task/--family/--patch), or directories holding
either. One row per (task, family): exponent b, a, c with standard errors,
and R^2 (of log loss for the pure law, of the loss with --offset). A law is
fitted to 3 patch sizes or more (4 with --offset): fewer are listed and
plotted as "2 points: no fit", with two sizes the slope between them.
"""
import argparse
import math
import sys
from pathlib import Path

from patchscale_mm.analysis.scaling_law import (NoFit, fit_records,
                                                load_records, min_patch_sizes,
                                                plot_scaling_law)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('inputs', nargs='+', help='results.json, scalars.json '
                        'or directories')
    parser.add_argument('--metric-key', default='test_loss',
                        help='value to fit (default: test_loss)')
    parser.add_argument('--offset', action='store_true',
                        help='fit loss = c + a * p^b (needs >= '
                        f'{min_patch_sizes(True)} patch sizes)')
    parser.add_argument('--out', help='plot path (default: scaling_law.png '
                        'beside the first input)')
    parser.add_argument('--task', help='task of scalars.json logs')
    parser.add_argument('--family', help='family of scalars.json logs')
    parser.add_argument('--patch', type=int,
                        help='patch size of a single scalars.json log')
    return parser.parse_args(argv)


def _pm(value: float, se: float) -> str:
    return f'{value:.4g}' if math.isnan(se) else f'{value:.4g} ± {se:.2g}'


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = {k: getattr(args, k) for k in ('task', 'family', 'patch')
            if getattr(args, k) is not None}
    try:
        records = load_records(args.inputs, args.metric_key, meta)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if not records:
        print('error: the inputs hold no records', file=sys.stderr)
        return 2
    fits, errors = fit_records(records, args.metric_key, args.offset)
    for (task, family), reason in errors.items():
        print(f'skipped {task} / {family}: {reason}', file=sys.stderr)
    if not fits:
        return 1

    law = 'c + a * p^b' if args.offset else 'a * p^b'
    r2 = 'R^2 (loss)' if args.offset else 'R^2 (log loss)'
    print(f'{args.metric_key} = {law}, ± one standard error\n')
    print(f'| task | family | points | b | a | c | {r2} |')
    print('|---|---|---|---|---|---|---|')
    for (task, family), fit in fits.items():
        if isinstance(fit, NoFit):  # a slope, never an error or R^2
            slope = '—' if fit.slope is None else f'slope {fit.slope:.4g}'
            print(f'| {task} | {family} | {fit.n} | {slope} | — | — | '
                  f'{fit.note} |')
            continue
        c = _pm(fit.c, fit.se_c) if fit.offset else '0'
        print(f'| {task} | {family} | {fit.n} | {_pm(fit.b, fit.se_b)} | '
              f'{_pm(fit.a, fit.se_a)} | {c} | {fit.r2:.4f} |')

    first = Path(args.inputs[0])
    out = Path(args.out) if args.out else (
        first if first.is_dir() else first.parent) / 'scaling_law.png'
    plot_scaling_law(records, fits, out, args.metric_key)
    print(f'\nplot: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
