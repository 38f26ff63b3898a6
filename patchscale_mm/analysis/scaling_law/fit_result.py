"""What fitting a group gives: a law (:class:`FitResult`) or, with too few
patch sizes to test one, its points (:class:`NoFit`)."""
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np


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
