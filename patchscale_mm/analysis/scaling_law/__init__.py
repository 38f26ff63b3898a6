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

One idea per module: :mod:`.fit_result` (what a fit gives), :mod:`.fit`
(the fits), :mod:`.records` (reading and grouping records) and :mod:`.plot`.
"""
from .fit import (fit_group, fit_offset_power_law, fit_power_law, fit_records,
                  min_patch_sizes, two_point_slope)
from .fit_result import FitResult, Group, GroupFit, NoFit
from .plot import plot_scaling_law
from .records import GROUP_KEYS, PathLike, group_records, load_records

__all__ = [
    'GROUP_KEYS', 'FitResult', 'Group', 'GroupFit', 'NoFit', 'PathLike',
    'fit_group', 'fit_offset_power_law', 'fit_power_law', 'fit_records',
    'group_records', 'load_records', 'min_patch_sizes', 'plot_scaling_law',
    'two_point_slope'
]
