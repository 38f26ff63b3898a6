"""The sweep's summary: the results table and the power-law fits of test
loss against patch size, with their plot."""
import json
from pathlib import Path
from typing import Sequence


def format_table(records: Sequence[dict]) -> str:
    header = ('task', 'family', 'patch', 'tokens', 'params', 'GFLOPs',
              'steps', 'test loss', 'metric', 'wall s')
    rows = [header]
    for r in records:
        rows.append((r['task'], r['family'], str(r['patch']),
                     f"{r['tokens']:,}", f"{r['params'] / 1e6:.3f}M",
                     f"{r['flops'] / 1e9:.3f}", str(r['steps']),
                     f"{r['test_loss']:.4f}",
                     f"{r['metric_name']} {r['metric']:.2f}",
                     f"{r['seconds']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return '\n'.join('  '.join(cell.rjust(w) for cell, w in zip(row, widths))
                     for row in rows)


def fit_and_plot(records: Sequence[dict], work_dir: Path, log) -> dict:
    """Fits loss = a * p^b and loss = c + a * p^b per (task, family) with at
    least 3 (resp. 4) patch sizes (fewer are shown as points, not laws);
    writes fits.json (no NaN) and scaling_law.png."""
    from patchscale_mm.analysis.scaling_law import (NoFit, fit_group,
                                                    fit_offset_power_law,
                                                    group_records,
                                                    min_patch_sizes,
                                                    plot_scaling_law)
    fits, summary = {}, {}
    for (task, family), group in sorted(group_records(records).items()):
        patches = [r['patch'] for r in group]
        losses = [r['test_loss'] for r in group]
        if len(set(patches)) < 2:
            continue
        fit = fits[(task, family)] = fit_group(patches, losses)
        summary[f'{task}/{family}'] = fit.as_dict()
        if isinstance(fit, NoFit):
            slope = ('' if fit.slope is None else
                     f', slope {fit.slope:.3f} between patches '
                     f'{max(patches)} and {min(patches)}')
            log(f'  {task} {family}: {fit.note}{slope}')
            continue
        line = (f'  {task} {family}: loss = {fit.a:.4g} * p^{fit.b:.3f} '
                f'(b ± {fit.se_b:.3f}, R² {fit.r2:.3f})')
        if len(set(patches)) >= min_patch_sizes(offset=True):
            try:
                off = fit_offset_power_law(patches, losses)
                line += (f'; with offset: {off.c:.4g} + {off.a:.4g} * '
                         f'p^{off.b:.3f} (R² {off.r2:.3f})')
                summary[f'{task}/{family}']['offset'] = off.as_dict()
            except (RuntimeError, ValueError) as e:
                line += f'; offset fit failed ({e})'
        log(line)
    if fits:
        plot = plot_scaling_law(records, fits, work_dir / 'scaling_law.png')
        log(f'plot: {plot}')
    # allow_nan=False: a reader of fits.json gets numbers or no key at all.
    (work_dir / 'fits.json').write_text(
        json.dumps(summary, indent=1, allow_nan=False))
    return fits
