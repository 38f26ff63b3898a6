"""Fitting the law to one group's points, and to every group of a sweep's
records."""
import math
import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .fit_result import FitResult, Group, GroupFit, NoFit
from .records import group_points, group_records


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
            fits[group] = fit_group(*group_points(rows, key), offset)
        except (TypeError, ValueError) as e:
            errors[group] = str(e)
    return fits, errors
