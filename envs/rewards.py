"""The bounded-tolerance reward primitive ``tol`` (docs/algorithm.md §11.2).

Every custom DMC and Jaco reward in this package is built from this one function,
so its semantics (which sigmoid, what ``value_at_margin`` means) live here only.
"""

import math

import numpy as np

SIGMOIDS = ("gaussian", "linear", "long_tail")


def _sigmoid(distance: np.ndarray, value_at_margin: float, sigmoid: str) -> np.ndarray:
    """Maps a non-negative normalised distance to (0, 1]; equals ``value_at_margin`` at distance 1."""
    if sigmoid == "gaussian":
        if not 0.0 < value_at_margin < 1.0:
            raise ValueError(f"gaussian tolerance needs 0 < value_at_margin < 1, got {value_at_margin}")
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        return np.exp(-0.5 * (distance * scale) ** 2)
    if sigmoid == "linear":
        if not 0.0 <= value_at_margin < 1.0:
            raise ValueError(f"linear tolerance needs 0 <= value_at_margin < 1, got {value_at_margin}")
        scaled = distance * (1.0 - value_at_margin)
        return np.where(scaled < 1.0, 1.0 - scaled, 0.0)
    if sigmoid == "long_tail":
        if not 0.0 < value_at_margin < 1.0:
            raise ValueError(f"long_tail tolerance needs 0 < value_at_margin < 1, got {value_at_margin}")
        scale = math.sqrt(1.0 / value_at_margin - 1.0)
        return 1.0 / ((distance * scale) ** 2 + 1.0)
    raise ValueError(f"unknown sigmoid {sigmoid!r}; valid sigmoids: {', '.join(SIGMOIDS)}")


def tolerance(
    x,
    lower: float,
    upper: float,
    margin: float = 0.0,
    sigmoid: str = "gaussian",
    value_at_margin: float = 0.1,
):
    """Returns 1 inside [lower, upper], decaying with the distance outside it.

    With ``margin == 0`` the reward is an indicator of the interval. Otherwise the distance
    outside the interval is divided by ``margin`` before the sigmoid is applied.
    Scalars give a Python float, arrays give an array of the same shape.
    """
    if lower > upper:
        raise ValueError(f"tolerance bounds must satisfy lower <= upper, got ({lower}, {upper})")
    if margin < 0:
        raise ValueError(f"tolerance margin must be non-negative, got {margin}")
    x_array = np.asarray(x, dtype=np.float64)
    inside = (x_array >= lower) & (x_array <= upper)
    if margin == 0:
        value = np.where(inside, 1.0, 0.0)
    else:
        distance = np.where(x_array < lower, lower - x_array, x_array - upper) / margin
        value = np.where(inside, 1.0, _sigmoid(distance, value_at_margin, sigmoid))
    return float(value) if value.ndim == 0 else value
