"""BoTorch numerics behind the ``bo`` searcher: surrogate fits, acquisitions, trust regions.

Everything here works in the unit cube (inputs normalised by the sampler) and maximises every
outcome (the sampler flips minimised objectives). Imported lazily: botorch is an optional extra.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

__all__ = ["Settings", "TurboState", "suggest", "turbo_state"]

DTYPE = torch.float64  # GP numerics want double precision


@dataclass(frozen=True)
class Settings:
    """The searcher's options that shape one suggestion (see :class:`~.bo.BayesOpt`)."""

    acquisition: str  # logei | ucb | qlognehvi
    kappa: float
    xi: float
    model: str  # gp | saas | turbo
    kernel: str  # default | matern
    num_restarts: int
    raw_samples: int
    mc_samples: int
    saas_warmup: int
    saas_samples: int
    saas_thinning: int
    turbo_success: int
    turbo_failure: int | None


@dataclass
class TurboState:
    """TuRBO-1's trust region, replayed from the trials (so nothing but trials is stored).

    Attributes:
        length: side of the trust region in the unit cube (before lengthscale weighting).
        restarts: how often the region shrank below ``length_min`` and was reset.
    """

    length: float = 0.8
    successes: int = 0
    failures: int = 0
    restarts: int = 0

    length_min = 0.5**7
    length_max = 1.6


def turbo_state(y: list[float], n_initial: int, dim: int, settings: Settings) -> TurboState:
    """Replay TuRBO's success/failure rule over the objective values in trial order.

    The first ``n_initial`` values set the incumbent; each later value is a success when it
    improves the incumbent by more than 1e-3·|incumbent|. ``turbo_success`` successes in a row
    double the region (capped at 1.6), ``turbo_failure`` failures in a row (default
    max(4, dim), as in Eriksson et al. 2019) halve it; below 0.5⁷ it is reset to 0.8.
    """
    state = TurboState()
    fail_tol = settings.turbo_failure or max(4, dim)
    best = max(y[:n_initial]) if y[:n_initial] else -math.inf
    for v in y[n_initial:]:
        if v > best + 1e-3 * abs(best):
            state.successes, state.failures = state.successes + 1, 0
        else:
            state.successes, state.failures = 0, state.failures + 1
        if state.successes >= settings.turbo_success:
            state.length, state.successes = min(2 * state.length, state.length_max), 0
        elif state.failures >= fail_tol:
            state.length, state.failures = state.length / 2, 0
        if state.length < state.length_min:
            state.length, state.restarts = 0.8, state.restarts + 1
        best = max(best, v)
    return state


def _lengthscale(model) -> torch.Tensor | None:
    for module in model.modules():
        ls = getattr(module, "lengthscale", None)
        if isinstance(ls, torch.Tensor) and ls.numel() > 1:
            return ls.detach().reshape(-1, ls.shape[-1]).mean(0)  # SAAS: mean over samples
    return None


def _trust_region(model, X: torch.Tensor, Y: torch.Tensor, length: float) -> torch.Tensor:
    """``(2, d)`` bounds of a box around the incumbent, stretched along long lengthscales."""
    center = X[Y[:, 0].argmax()]
    ls = _lengthscale(model)
    if ls is None:
        weights = torch.ones_like(center)
    else:
        weights = ls / ls.mean()
        weights = weights / weights.prod().pow(1.0 / len(weights))
    lo = (center - weights * length / 2).clamp(0.0, 1.0)
    hi = (center + weights * length / 2).clamp(0.0, 1.0)
    return torch.stack([lo, hi])


def _fit_single(X: torch.Tensor, y: torch.Tensor, settings: Settings, seed: int, time_s: float):
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    if settings.model == "saas":
        from botorch.fit import fit_fully_bayesian_model_nuts
        from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP

        model = SaasFullyBayesianSingleTaskGP(X, y, outcome_transform=Standardize(m=1))
        fit_fully_bayesian_model_nuts(
            model,
            warmup_steps=settings.saas_warmup,
            num_samples=settings.saas_samples,
            thinning=settings.saas_thinning,
            disable_progbar=True,
            seed=seed,
        )
        return model
    covar = None
    if settings.kernel == "matern":
        from botorch.models.utils.gpytorch_modules import (
            get_covar_module_with_dim_scaled_prior,
        )

        covar = get_covar_module_with_dim_scaled_prior(X.shape[-1], use_rbf_kernel=False)
    model = SingleTaskGP(X, y, covar_module=covar, outcome_transform=Standardize(m=1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    # botorch retries a fit that warns, each attempt with the full timeout: bound both.
    attempts = 2
    fit_gpytorch_mll(
        mll,
        optimizer_kwargs={"timeout_sec": max(time_s / attempts, 0.25)},
        max_attempts=attempts,
    )
    return model


def _fit(X: torch.Tensor, Y: torch.Tensor, settings: Settings, seed: int, time_s: float):
    if Y.shape[1] == 1:
        return _fit_single(X, Y, settings, seed, time_s)
    from botorch.models import ModelListGP

    share = time_s / Y.shape[1]
    return ModelListGP(
        *[_fit_single(X, Y[:, i : i + 1], settings, seed + i, share) for i in range(Y.shape[1])]
    )


def _acquisition(model, X, Y, X_pending, settings: Settings, seed: int):
    from botorch.sampling import SobolQMCNormalSampler

    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]), seed=seed)
    if settings.acquisition == "qlognehvi":
        from botorch.acquisition.multi_objective.logei import (
            qLogNoisyExpectedHypervolumeImprovement,
        )

        # Worst observed value of each objective, less 10% of its observed range.
        span = (Y.max(0).values - Y.min(0).values).clamp(min=1e-9)
        ref = Y.min(0).values - 0.1 * span
        return qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=ref.tolist(),
            X_baseline=X,
            sampler=sampler,
            X_pending=X_pending,
            prune_baseline=True,
        )
    if settings.acquisition == "ucb":
        from botorch.acquisition import qUpperConfidenceBound

        # botorch's UCB is μ + √β·σ: κ = 2.576 (the paper's) is β = κ².
        return qUpperConfidenceBound(
            model, beta=settings.kappa**2, sampler=sampler, X_pending=X_pending
        )
    from botorch.acquisition.logei import qLogExpectedImprovement

    # EI's ξ (bayes_opt's xi): improvement over best + ξ, in the objective's own units.
    return qLogExpectedImprovement(
        model, best_f=float(Y[:, 0].max()) + settings.xi, sampler=sampler, X_pending=X_pending
    )


def suggest(
    X: torch.Tensor,
    Y: torch.Tensor,
    X_pending: torch.Tensor | None,
    settings: Settings,
    *,
    seed: int,
    timeout_s: float,
    turbo: TurboState | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The next point in the unit cube, maximising the acquisition; and timing info.

    Args:
        X: ``(n, d)`` complete trials' points in ``[0, 1]^d``.
        Y: ``(n, m)`` their values, to be maximised.
        X_pending: ``(p, d)`` points of trials in flight, or ``None``.
        seed: seeds the fit (NUTS), the MC samples and the acquisition's restarts.
        timeout_s: wall-clock bound for the whole suggestion (fit gets at most half).
        turbo: the trust region to search in (``model: turbo``), else the whole cube.
    """
    from botorch.optim import optimize_acqf

    start = time.monotonic()
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # input-scaling / numerical warnings on tiny data
        torch.manual_seed(seed)
        model = _fit(X, Y, settings, seed, timeout_s / 2)
        fit_s = time.monotonic() - start
        acq = _acquisition(model, X, Y, X_pending, settings, seed)
        d = X.shape[1]
        bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
        if turbo is not None:
            bounds = _trust_region(model, X, Y, turbo.length)
        left = max(timeout_s - (time.monotonic() - start), 0.5)
        cand, _ = optimize_acqf(
            acq,
            bounds=bounds,
            q=1,
            num_restarts=settings.num_restarts,
            raw_samples=settings.raw_samples,
            timeout_sec=left,
        )
    info = {"fit_s": round(fit_s, 3), "suggest_s": round(time.monotonic() - start, 3)}
    return cand[0].clamp(0.0, 1.0), info
