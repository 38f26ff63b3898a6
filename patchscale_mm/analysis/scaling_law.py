"""The patch-size scaling law of the paper's Figure 1: test loss against
patch size, per task and model family.

Two forms are fitted:

* ``loss = a * p**b``, a straight line in log-log space, by least squares
  on ``log loss`` (:func:`fit_power_law`); R^2 is that of the log fit.
* ``loss = c + a * p**b`` with an irreducible loss ``c``, by nonlinear least
  squares on the loss itself (:func:`fit_offset_power_law`); R^2 is that of
  the loss.

Standard errors come from the residual variance (ordinary least squares
covariance, and ``scipy.optimize.curve_fit``'s for the offset form); they
are ``nan`` when there are no residual degrees of freedom.

A law with as many parameters as patch sizes passes through every point
(R^2 = 1, no standard errors) and tests nothing, so :func:`fit_group` and
:func:`fit_records` fit only groups with :func:`min_patch_sizes` patch sizes
(3, or 4 with the offset) and return a :class:`NoFit` for smaller ones: its
points are shown joined, and with two patch sizes the log-log slope between
them.

Sweep results are read from ``results.json`` (a list of records with at
least ``task``, ``family``, ``patch`` and the fitted key, e.g. ``test_loss``)
or from MMEngine's ``vis_data/scalars.json`` logs (:func:`load_records`).
"""
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

GROUP_KEYS = ('task', 'family', 'patch')
PathLike = Union[str, Path]


@dataclass(frozen=True)
class FitResult:
    """A fitted ``loss = c + a * p**b`` (``c = 0`` for the pure power law).

    Attributes:
        a, b, c (float): Parameters.
        se_a, se_b, se_c (float): Their standard errors (``nan`` when not
            estimable; ``se_c`` is ``nan`` for the pure law, whose c is 0).
        r2 (float): Coefficient of determination, in log space for the pure
            law and in loss space for the offset law.
        n (int): Number of points.
        offset (bool): Whether ``c`` was fitted.
    """
    a: float
    b: float
    c: float
    se_a: float
    se_b: float
    se_c: float
    r2: float
    n: int
    offset: bool = False

    def predict(self, patches) -> np.ndarray:
        """The fitted loss at the given patch sizes."""
        return self.c + self.a * np.asarray(patches, dtype=float)**self.b

    def as_dict(self) -> dict:
        """The JSON form, ``fitted`` true; values that are not finite
        (e.g. R^2 of equal losses) are left out, as JSON has no NaN."""
        keys = ('a', 'b', 'c', 'se_a', 'se_b', 'se_c', 'r2') if self.offset \
            else ('a', 'b', 'se_a', 'se_b', 'r2')
        out = dict(fitted=True, n=self.n)
        out.update((k, getattr(self, k)) for k in keys
                   if math.isfinite(getattr(self, k)))
        return out


@dataclass(frozen=True)
class NoFit:
    """A group with too few patch sizes for a law to be tested.

    Attributes:
        sizes (int): Distinct patch sizes ("points" in the note).
        n (int): Number of records (repeats included).
        slope (float, optional): With two patch sizes, the log-log slope
            between their mean losses (the exponent a pure law through
            them would have), with no standard error or R^2; else None.
    """
    sizes: int
    n: int
    slope: Optional[float] = None

    @property
    def note(self) -> str:
        return f'{self.sizes} points: no fit'

    def as_dict(self) -> dict:
        """The JSON form (no NaN): ``fitted`` false, the note, the slope."""
        out = dict(fitted=False, n=self.n, patch_sizes=self.sizes,
                   note=self.note)
        if self.slope is not None:
            out['slope'] = self.slope
        return out


GroupFit = Union[FitResult, NoFit]
Group = Tuple[str, str]  # (task, family)


def min_patch_sizes(offset: bool = False) -> int:
    """Distinct patch sizes a law is fitted to: one more than it has
    parameters, so that it can miss a point."""
    return 4 if offset else 3


def two_point_slope(patches: Sequence[float],
                    losses: Sequence[float]) -> Optional[float]:
    """The log-log slope between two patch sizes (the mean loss of each),
    or None for any other number of sizes or a non-positive loss."""
    p = np.asarray(patches, dtype=float)
    y = np.asarray(losses, dtype=float)
    sizes = np.unique(p)
    if sizes.size != 2 or np.any(y <= 0):
        return None
    mean_log = [np.log(y[p == s]).mean() for s in sizes]
    return float((mean_log[1] - mean_log[0]) /
                 (np.log(sizes[1]) - np.log(sizes[0])))


def _check_points(patches, losses, min_distinct: int,
                  what: str) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(patches, dtype=float).ravel()
    y = np.asarray(losses, dtype=float).ravel()
    if p.size != y.size:
        raise ValueError(f'patches and losses differ in length '
                         f'({p.size} vs {y.size})')
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f'patch sizes must be positive numbers, got '
                         f'{p.tolist()}')
    if not np.all(np.isfinite(y)):
        raise ValueError(f'losses must be finite, got {y.tolist()}')
    distinct = np.unique(p)
    if distinct.size < min_distinct:
        raise ValueError(f'{what} needs at least {min_distinct} distinct '
                         f'patch sizes, got {distinct.size} '
                         f'({", ".join(f"{v:g}" for v in distinct)})')
    return p, y


def _r2(y: np.ndarray, residuals: np.ndarray) -> float:
    sst = float(np.sum((y - y.mean())**2))
    return 1. - float(np.sum(residuals**2)) / sst if sst > 0 else math.nan


def fit_power_law(patches: Sequence[float],
                  losses: Sequence[float]) -> FitResult:
    """Fits ``loss = a * p**b`` by linear least squares in log-log space.

    Args:
        patches: Patch sizes p (> 0); repeats (e.g. seeds) are allowed.
        losses: Losses (> 0), one per patch entry.

    Returns:
        FitResult: with ``c = 0`` and R^2 of ``log loss``.

    Raises:
        ValueError: Fewer than 2 distinct patch sizes, non-positive losses or
            patch sizes, or mismatched lengths.
    """
    p, y = _check_points(patches, losses, 2, 'a power-law fit')
    if np.any(y <= 0):
        bad = int(np.argmax(y <= 0))
        raise ValueError(f'a log-log fit needs positive losses; got '
                         f'{y[bad]:g} at patch {p[bad]:g}')
    X = np.stack([np.ones_like(p), np.log(p)], axis=1)
    log_y = np.log(y)
    (log_a, b), *_ = np.linalg.lstsq(X, log_y, rcond=None)
    residuals = log_y - X @ np.array([log_a, b])
    dof = p.size - 2
    if dof > 0:
        cov = np.sum(residuals**2) / dof * np.linalg.inv(X.T @ X)
        se_log_a, se_b = np.sqrt(np.diag(cov))
    else:
        se_log_a = se_b = math.nan
    a = math.exp(log_a)
    return FitResult(
        a=a,
        b=float(b),
        c=0.,
        se_a=a * se_log_a,  # delta method: d(exp u) = exp(u) du
        se_b=float(se_b),
        se_c=math.nan,
        r2=_r2(log_y, residuals),
        n=p.size)


def fit_group(patches: Sequence[float], losses: Sequence[float],
              offset: bool = False) -> GroupFit:
    """The law fitted to one group, or a :class:`NoFit` when it has fewer
    than :func:`min_patch_sizes` patch sizes.

    Raises:
        ValueError: Fewer than 2 distinct patch sizes or bad values.
    """
    p, y = _check_points(patches, losses, 2, 'a power-law fit')
    sizes = np.unique(p).size
    if sizes < min_patch_sizes(offset):
        return NoFit(sizes, p.size, two_point_slope(p, y))
    return fit_offset_power_law(p, y) if offset else fit_power_law(p, y)


def _offset_law(log_p, a, b, c):
    return c + a * np.exp(b * log_p)


def fit_offset_power_law(patches: Sequence[float],
                         losses: Sequence[float]) -> FitResult:
    """Fits ``loss = c + a * p**b`` by nonlinear least squares.

    Several starting points are tried (``c`` just below the smallest loss
    down to well below it, ``a, b`` from a log-log fit of ``loss - c``) and
    the best fit is kept, so exact data are recovered exactly.

    Args:
        patches: Patch sizes p (> 0).
        losses: Losses (any sign), one per patch entry.

    Returns:
        FitResult: with ``offset=True`` and R^2 of the loss.

    Raises:
        ValueError: Fewer than 3 distinct patch sizes, or bad values.
    """
    from scipy.optimize import OptimizeWarning, curve_fit
    p, y = _check_points(patches, losses, 3, 'an offset power-law fit')
    log_p = np.log(p)
    spread = max(float(np.ptp(y)), 1e-12 * max(abs(float(y.min())), 1.))
    starts = [y.min() - k * spread for k in (1e-3, 1e-1, 1., 10.)]
    if y.min() > 0:
        starts.append(0.)
    best = None
    for c0 in starts:
        guess = fit_power_law(p, y - c0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', OptimizeWarning)
                params, cov = curve_fit(
                    _offset_law,
                    log_p,
                    y,
                    p0=(guess.a, guess.b, c0),
                    maxfev=20000)
        except RuntimeError:  # no convergence from this start
            continue
        ssr = float(np.sum((y - _offset_law(log_p, *params))**2))
        if best is None or ssr < best[0]:
            best = ssr, params, cov
    if best is None:
        raise ValueError('the offset power-law fit did not converge from any '
                         'starting point')
    _, (a, b, c), cov = best
    if p.size > 3 and np.all(np.isfinite(cov)):
        se_a, se_b, se_c = np.sqrt(np.clip(np.diag(cov), 0, None))
    else:
        se_a = se_b = se_c = math.nan
    return FitResult(
        a=float(a),
        b=float(b),
        c=float(c),
        se_a=float(se_a),
        se_b=float(se_b),
        se_c=float(se_c),
        r2=_r2(y, y - _offset_law(log_p, a, b, c)),
        n=p.size,
        offset=True)


# ---------------------------------------------------------------------------
# Reading sweep results
# ---------------------------------------------------------------------------
def _check_record(record, where: str, key: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f'{where} is not a JSON object: {record!r}')
    missing = [k for k in GROUP_KEYS + (key, ) if k not in record]
    if missing:
        raise ValueError(f'{where} lacks key(s) {", ".join(missing)} '
                         f'(has: {", ".join(sorted(record)) or "none"})')
    return record


def _read_results_json(path: Path, key: str) -> List[dict]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a list of records, got '
                         f'{type(data).__name__}')
    return [
        _check_record(r, f'{path}: record {i}', key)
        for i, r in enumerate(data)
    ]


def _meta_from_config(config_path: Path) -> dict:
    """task/family/patch from the config MMEngine dumps beside its logs."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(config_path))
    model = cfg.get('model', {})
    backbone = model.get('backbone', {})
    meta = {}
    if 'type' in backbone:
        meta['family'] = str(backbone['type']).split('.')[-1]
    if 'patch_size' in backbone:
        meta['patch'] = backbone['patch_size']
    kinds = {'ImageClassifier': 'cls', 'EncoderDecoder': 'seg'}
    if 'type' in model:
        kind = kinds.get(str(model['type']).split('.')[-1], 'det')
        size = backbone.get('img_size')
        meta['task'] = f'{kind}-{size}' if isinstance(size, int) else kind
    return meta


def _read_scalars_json(path: Path, key: str, meta: dict) -> dict:
    """The last logged value of ``key`` in an MMEngine ``scalars.json``."""
    last = None
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f'{path}: line {i + 1} is not JSON') from None
        if key in entry:
            last = entry
    if last is None:
        raise ValueError(f'{path}: no logged value of {key!r} (pass the '
                         'logged name with --metric-key)')
    record = {key: last[key], 'steps': last.get('step')}
    config = path.parent / 'config.py'
    if config.is_file() and not all(k in meta for k in GROUP_KEYS):
        record.update(_meta_from_config(config))
    record.update(meta)
    missing = [k for k in GROUP_KEYS if k not in record]
    if missing:
        raise ValueError(f'{path}: cannot tell {", ".join(missing)} (no '
                         f'usable config.py beside it); pass '
                         f'{" ".join("--" + k for k in missing)}')
    return record


def load_records(paths: Union[PathLike, Sequence[PathLike]],
                 key: str = 'test_loss',
                 meta: Optional[dict] = None) -> List[dict]:
    """Reads sweep records from results files, logs or directories.

    Args:
        paths: ``results.json`` files (a JSON list of records), MMEngine
            ``scalars.json`` logs (one JSON object per line; the last value
            of ``key`` is taken), or directories searched for both.
        key (str): The value to fit. Defaults to ``'test_loss'``.
        meta (dict, optional): ``task``/``family``/``patch`` for logs whose
            ``vis_data/config.py`` does not tell them.

    Returns:
        list[dict]: Records with at least ``task``, ``family``, ``patch`` and
        ``key``.

    Raises:
        ValueError: On a missing path or key, naming which.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob('results.json')) + sorted(
                path.rglob('scalars.json'))
            if not found:
                raise ValueError(f'{path}: no results.json or scalars.json '
                                 'below this directory')
        elif path.is_file():
            found = [path]
        else:
            raise ValueError(f'{path}: no such file or directory')
        for file in found:
            if file.name.endswith('scalars.json'):
                records.append(_read_scalars_json(file, key, meta or {}))
            else:
                records.extend(_read_results_json(file, key))
    return records


def group_records(records: Sequence[dict]) -> Dict[Tuple[str, str], list]:
    """Records grouped by ``(task, family)``, in first-seen order."""
    groups = {}
    for r in records:
        groups.setdefault((str(r['task']), str(r['family'])), []).append(r)
    return groups


def fit_records(records: Sequence[dict],
                key: str = 'test_loss',
                offset: bool = False) -> Tuple[Dict[Group, GroupFit],
                                               Dict[Group, str]]:
    """Fits every ``(task, family)`` group of records (:func:`fit_group`).

    Returns:
        tuple: ``(fits, errors)``, both keyed by ``(task, family)``; a group
        with too few patch sizes gets a :class:`NoFit` in ``fits``, one
        that cannot be fitted at all its one-line reason in ``errors``.
    """
    fits, errors = {}, {}
    for group, rows in group_records(records).items():
        try:
            fits[group] = fit_group([float(r['patch']) for r in rows],
                                    [float(r[key]) for r in rows], offset)
        except (TypeError, ValueError) as e:
            errors[group] = str(e)
    return fits, errors


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------
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
            p = np.array([float(r['patch']) for r in rows_])
            y = np.array([float(r[key]) for r in rows_])
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
