"""The layer code's exp and sigmoid (rwkvx/_kernels/exp_poly.h) against double-precision math."""
import numpy as np
import pytest

from rwkvx import _core

F32 = np.finfo(np.float32)
EXP_MAX = np.float32(88.72283)  # ln(FLT_MAX): above it, +inf
EXP_MIN = np.float32(-87.33654)  # ln(FLT_MIN): below it, 0 (true results are subnormal)
EXP_ULP_TOLERANCE = 3


def ulps_off(actual: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|actual - exact| in units of the last place of float32(exact)."""
    nearest = exact.astype(np.float32)
    ulp = np.spacing(np.abs(nearest)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / ulp


def test_exp_within_3_ulp_over_the_normal_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.linspace(EXP_MIN, EXP_MAX, 2_000_001, dtype=np.float32),
        rng.uniform(-1, 1, 200_000).astype(np.float32),  # where decays and gates live
        np.array([0.0, -0.0, 1e-30, -1e-30, 0.34657359, -0.34657359, EXP_MIN, EXP_MAX], dtype=np.float32),
    ])
    x = x[(x >= EXP_MIN) & (x <= EXP_MAX)]
    off = ulps_off(_core.exp_poly(x), np.exp(x.astype(np.float64)))
    assert off.max() <= EXP_ULP_TOLERANCE, f"{off.max():.2f} ulp at x = {x[off.argmax()]!r}"


def test_exp_edges():
    x = np.array([np.inf, -np.inf, np.nan, 88.8, 1e6, -87.4, -1e6, F32.max, -F32.max], dtype=np.float32)
    y = _core.exp_poly(x)
    assert y[0] == np.inf and y[1] == 0.0 and np.isnan(y[2])
    assert y[3] == np.inf and y[4] == np.inf and y[7] == np.inf
    assert y[5] == 0.0 and y[6] == 0.0 and y[8] == 0.0
    assert _core.exp_poly(np.array([0.0], dtype=np.float32))[0] == 1.0


@pytest.mark.parametrize("lo,hi", [(-30.0, 30.0), (-1.0, 1.0), (-120.0, 120.0)])
def test_sigmoid_close_to_exact(lo, hi):
    x = np.linspace(lo, hi, 100_001, dtype=np.float32)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    y = _core.exp_poly(x, sigmoid=True)
    # the division and 1 + e^-x each add half an ulp to exp's error; below -87.3 the result is
    # flushed to 0 where the exact one is below the smallest normal float
    excess = np.abs(y - exact) - (5 * F32.eps * exact + F32.tiny)
    assert excess.max() <= 0, f"{np.abs(y - exact)[excess.argmax()]:.3g} off at x = {x[excess.argmax()]!r}"
    assert np.all(np.diff(y) >= 0), "sigmoid must not decrease"


def test_sigmoid_edges():
    y = _core.exp_poly(np.array([np.inf, -np.inf, np.nan, -100.0, 100.0], dtype=np.float32), sigmoid=True)
    assert y[0] == 1.0 and y[1] == 0.0 and np.isnan(y[2]) and y[4] == 1.0
    assert 0.0 <= y[3] < 1e-38
