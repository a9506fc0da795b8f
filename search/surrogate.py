"""MAP's per-task surrogates: a quadratic in the coefficients through a link, fitted by least
squares (``scipy.optimize.curve_fit``), with cross-validated R².

M̃(c) = link(Σᵢ aᵢᵢcᵢ² + Σ_{i<j} aᵢⱼcᵢcⱼ + Σᵢ bᵢcᵢ + e); the link is a sigmoid for accuracies
(scores in [0, 1]), a softplus for losses (non-negative), or the identity.

Example:
    >>> import numpy as np
    >>> u = np.random.default_rng(0).uniform(size=(30, 2))
    >>> y = 1 / (1 + np.exp(-(1 - 3 * (u[:, 0] - 0.5) ** 2 + u[:, 1])))
    >>> model = fit_quadratic(u, y, "sigmoid")
    >>> bool(np.abs(model.predict(u) - y).max() < 1e-6)
    True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LINKS", "Quadratic", "choose_link", "cv_r2", "fit_quadratic", "quad_features"]

LINKS = ("sigmoid", "softplus", "identity")
_EPS = 1e-3


def n_coefficients(dim: int) -> int:
    """Coefficients of a full quadratic in ``dim`` variables: (d+1)(d+2)/2."""
    return (dim + 1) * (dim + 2) // 2


def quad_features(u: np.ndarray) -> np.ndarray:
    """Columns [cᵢ², cᵢcⱼ (i<j), cᵢ, 1] of points ``u`` (n, d)."""
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    n, d = u.shape
    iu, ju = np.triu_indices(d, k=1)
    return np.hstack([u**2, u[:, iu] * u[:, ju], u, np.ones((n, 1))])


def _apply_link(z: np.ndarray, link: str) -> np.ndarray:
    if link == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
    if link == "softplus":
        return np.logaddexp(0.0, z)
    return z


def _inverse_link(y: np.ndarray, link: str) -> np.ndarray:
    if link == "sigmoid":
        p = np.clip(y, _EPS, 1 - _EPS)
        return np.log(p / (1 - p))
    if link == "softplus":
        v = np.maximum(y, 1e-6)
        return np.where(v > 30, v, np.log(np.expm1(np.minimum(v, 30))))
    return np.asarray(y, dtype=np.float64)


def choose_link(metric: str, direction: str, values: Any) -> str:
    """``sigmoid`` for accuracies (maximised scores in [0, 1]), ``softplus`` for losses
    (minimised, non-negative), else ``identity``."""
    v = np.asarray(values, dtype=np.float64)
    inside = v.size == 0 or bool(np.all((v >= 0) & (v <= 1)))
    if metric == "accuracy" or (direction == "maximize" and inside):
        return "sigmoid"
    if direction == "minimize" and (v.size == 0 or bool(np.all(v >= 0))):
        return "softplus"
    return "identity"


@dataclass
class Quadratic:
    """A fitted surrogate: ``link(quad_features(u) @ coef)``."""

    coef: np.ndarray
    link: str

    def predict(self, u: np.ndarray) -> np.ndarray:
        """Predicted metric at points ``u`` (n, d)."""
        return _apply_link(quad_features(u) @ self.coef, self.link)

    def to_dict(self) -> dict[str, Any]:
        return {"coef": [float(c) for c in self.coef], "link": self.link}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quadratic:
        return cls(np.asarray(data["coef"], dtype=np.float64), str(data["link"]))


def fit_quadratic(u: np.ndarray, y: np.ndarray, link: str) -> Quadratic:
    """Least-squares fit of a quadratic through ``link`` to scores ``y`` at points ``u``.

    Starts from the linear least-squares fit on the link's inverse of the scores, then
    refines on the scores themselves with ``curve_fit`` (Levenberg–Marquardt when there are at
    least as many points as coefficients, else trust-region).
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x = quad_features(u)
    y = np.asarray(y, dtype=np.float64)
    z = _inverse_link(y, link)
    p = x.shape[1]
    w0 = np.linalg.lstsq(x, z, rcond=None)[0]  # minimum-norm when under-determined
    if link == "identity":
        return Quadratic(w0, link)

    def model(xx: np.ndarray, *w: float) -> np.ndarray:
        return _apply_link(xx @ np.asarray(w), link)

    def jac(xx: np.ndarray, *w: float) -> np.ndarray:
        # d link(z)/dz: σ(1−σ) for the sigmoid, σ for the softplus.
        s = _apply_link(xx @ np.asarray(w), "sigmoid")
        return (s * (1 - s) if link == "sigmoid" else s)[:, None] * xx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            w, _ = curve_fit(
                model,
                x,
                y,
                p0=w0,
                jac=jac,
                method="lm" if len(y) >= p else "trf",
                maxfev=5000,
            )
        w = np.asarray(w, dtype=np.float64)
        if np.all(np.isfinite(w)) and _sse(model(x, *w), y) <= _sse(model(x, *w0), y):
            return Quadratic(w, link)
    except (RuntimeError, ValueError):  # no convergence: keep the linearised fit
        pass
    return Quadratic(w0, link)


def _sse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((pred - y) ** 2))


def cv_r2(u: np.ndarray, y: np.ndarray, link: str, *, folds: int = 5, seed: int = 0) -> float:
    """R² of held-out predictions (k-fold; each point predicted by a fit without it).

    ``nan`` when there are too few points to hold any out (fewer than the coefficients + 2)
    or the scores do not vary.
    """
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < n_coefficients(u.shape[1]) + 2 or np.var(y) == 0:
        return float("nan")
    k = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    pred = np.empty(n)
    for f in range(k):
        held = order[f::k]
        keep = np.setdiff1d(order, held)
        pred[held] = fit_quadratic(u[keep], y[keep], link).predict(u[held])
    return float(1.0 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
