"""The paper's Figure 1: a log-log plot of the loss against patch size,
one panel per task, the points and the fitted law of each family."""
import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .fit_result import Group, GroupFit, NoFit
from .records import PathLike, group_points, group_records


def plot_scaling_law(records: Sequence[dict],
                     fits: Dict[Group, GroupFit],
                     path: PathLike,
                     key: str = 'test_loss',
                     dpi: int = 150) -> Path:
    """Log-log plot of ``key`` against patch size, one panel per task.

    Points and the fitted curve per family, as in the paper's Figure 1; the
    points of a :class:`NoFit` group are joined by a dashed line and
    labelled so, never drawn as a law. The x axis runs from large to small
    patches. Uses the Agg canvas directly, so
    it works headless and leaves pyplot's state alone.

    Returns:
        Path: The written image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import (FuncFormatter, LogFormatter, MaxNLocator,
                                   NullFormatter, NullLocator)

    groups = group_records(records)
    tasks = list(dict.fromkeys(task for task, _ in groups))
    cols = min(len(tasks), 4)
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout='constrained')
    FigureCanvasAgg(fig)
    families = list(dict.fromkeys(family for _, family in groups))
    colors = {f: f'C{i % 10}' for i, f in enumerate(families)}
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, i + 1)
        patches = set()
        for (t, family), rows_ in groups.items():
            if t != task:
                continue
            p, y = group_points(rows_, key)
            patches.update(p.tolist())
            fit = fits.get((t, family))
            label = family
            if isinstance(fit, NoFit):
                sizes = np.unique(p)
                means = [y[p == s].mean() for s in sizes]
                ax.plot(sizes, means, color=colors[family], lw=1, ls='--')
                label += f' ({fit.note}'
                label += (f', slope {fit.slope:.3f})'
                          if fit.slope is not None else ')')
            elif fit is not None:
                grid = np.geomspace(p.min(), p.max(), 64)
                ax.plot(grid, fit.predict(grid), color=colors[family], lw=1.5)
                label += f' (b = {fit.b:.3f}'
                label += f', c = {fit.c:.3g})' if fit.offset else ')'
            ax.scatter(p, y, color=colors[family], s=22, zorder=3,
                       label=label)
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ticks = sorted(patches)
        ax.set_xticks(ticks, [f'{v:g}' for v in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        low, high = ax.get_ylim()
        if high / low < 10:
            # Losses often span less than a decade, with no power of ten
            # inside: use evenly spaced plain ticks instead.
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_minor_formatter(
                LogFormatter(labelOnlyBase=False, minor_thresholds=(2, .5)))
        if len(ticks) > 1:
            ax.set_xlim(max(ticks) * 1.25, min(ticks) / 1.25)  # 16 ... 1
        ax.set_title(task)
        ax.set_xlabel('patch size')
        ax.set_ylabel(key)
        ax.grid(True, which='both', alpha=.3)
        ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
