"""Tests that stay honest at five folds: the exact sign-flip test and the random-effects pool.

The paper's paired bootstrap (`coordchannels.stats.compare`) resamples 5 fold differences; its
"95%" percentile interval covers the mean less often than it says at that n, and its p-value is 0
whenever all 5 differences share a sign. Beside it, and wherever a claim is made from folds or
replications, the project reports:

* `sign_flip` — the exact paired permutation test: under the null of no difference each paired
  difference is as likely positive as negative, so the 2^n sign patterns are equally likely. The
  p-value counts the patterns whose mean is at least as extreme as the observed one. It can never
  be smaller than 1/2^n one-sided or 2/2^n two-sided (`sign_flip_floor`): 1/32 and 1/16 for 5
  folds, so no two-sided test over 5 folds reaches p < 0.05, and no Holm-corrected family of
  several such tests does either.
* `random_effects` — replications as the unit of inference: each replication's mean difference
  y_i with its within-replication variance v_i (variance of its fold differences / n folds) are
  pooled with DerSimonian-Laird's between-replication variance tau^2, and the
  Hartung-Knapp-Sidik-Jonkman interval and p-value (a t distribution on k - 1 degrees of freedom
  with the weighted residual variance), which keeps its coverage with few replications where the
  normal-theory DL interval does not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

ALTERNATIVES = ("two-sided", "greater", "less")
# Enumerate every sign pattern up to this many pairs (2^20 ~ 1e6 patterns); Monte Carlo above.
MAX_EXACT_PAIRS = 20
# Relative tolerance for "at least as extreme": sums of the same numbers in another order differ
# in the last bits, and a pattern equal to the observed one must count.
TIE_TOLERANCE = 1e-9


def sign_flip_floor(n: int, alternative: str = "two-sided") -> float:
    """The smallest p-value an exact sign-flip test over n pairs can give."""
    _check_alternative(alternative)
    return (2.0 if alternative == "two-sided" else 1.0) / 2.0**n


def sign_flip(d: Sequence[float], alternative: str = "two-sided", n_resamples: int = 100_000, seed: int = 42) -> float:
    """p-value of the paired sign-flip (permutation) test of mean(d) = 0.

    `alternative`: 'greater' (mean > 0), 'less' (mean < 0) or 'two-sided' (|mean| extreme). Up to
    `MAX_EXACT_PAIRS` pairs every one of the 2^n sign patterns is enumerated (exact); above, a
    Monte-Carlo draw of `n_resamples` patterns with the observed pattern counted, (1 + k)/(1 + B).

    >>> sign_flip([1, 2, 3, 4, 5], "greater")  # only the observed pattern is as large: 1/32
    0.03125
    >>> sign_flip([1, 2, 3, 4, 5])  # all plus or all minus: 2/32
    0.0625
    """
    _check_alternative(alternative)
    d = np.asarray(d, dtype=float)
    if d.ndim != 1 or len(d) < 1:
        raise ValueError(f"a sign-flip test needs a 1-D sequence of paired differences; got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"paired differences must be finite numbers; got {d.tolist()}")
    if len(d) <= MAX_EXACT_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        exact = True
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_resamples, len(d)))
        exact = False
    sums = signs @ d
    observed = float(d.sum())
    tol = TIE_TOLERANCE * max(1.0, float(np.abs(d).sum()))
    if alternative == "greater":
        hits = np.count_nonzero(sums >= observed - tol)
    elif alternative == "less":
        hits = np.count_nonzero(sums <= observed + tol)
    else:
        hits = np.count_nonzero(np.abs(sums) >= abs(observed) - tol)
    if exact:
        return float(hits / len(sums))
    return float((1 + hits) / (1 + len(sums)))


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}: expected one of {', '.join(ALTERNATIVES)}")


def within_variance(diffs: Sequence[float]) -> float:
    """Variance of a replication's mean difference: the sample variance of its fold differences
    (ddof = 1) over their number."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        raise ValueError(f"a within-replication variance needs at least 2 fold differences; got {len(d)}")
    return float(d.var(ddof=1) / len(d))


def random_effects(
    estimates: Sequence[float], variances: Sequence[float], confidence: float = 0.95
) -> dict[str, float]:
    """DerSimonian-Laird random-effects pool with the Hartung-Knapp-Sidik-Jonkman CI and p.

    Returns the pooled estimate, its HKSJ standard error, CI and two-sided p (t on k - 1 df), tau^2,
    Cochran's Q and I^2, and the plain DL (normal) standard error for reference.
    """
    y = np.asarray(estimates, dtype=float)
    v = np.asarray(variances, dtype=float)
    k = len(y)
    if k < 2 or len(v) != k:
        raise ValueError(f"a random-effects pool needs at least 2 estimates with one variance each; got {k}, {len(v)}")
    if not np.all(np.isfinite(np.concatenate([y, v]))) or np.any(v < 0) or (np.any(v == 0) and not np.all(v == 0)):
        raise ValueError(
            f"variances must be positive (or all zero) and every value finite; got {y.tolist()}, {v.tolist()}"
        )
    if np.all(v == 0):
        # No within-replication spread (identical fold differences): the limit of equal variances,
        # where the HKSJ pool is the t-interval of the replication means.
        v = np.ones(k)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must lie strictly between 0 and 1")
    w = 1 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c)
    w_re = 1 / (v + tau2)
    mu = float(np.sum(w_re * y) / np.sum(w_re))
    # HKSJ: the variance of mu scaled by the weighted mean squared residual.
    se = float(np.sqrt(np.sum(w_re * (y - mu) ** 2) / ((k - 1) * np.sum(w_re))))
    t_crit = float(sps.t.ppf(1 - (1 - confidence) / 2, k - 1))
    p = float(2 * sps.t.sf(abs(mu) / se, k - 1)) if se > 0 else (0.0 if mu != 0 else 1.0)
    return {
        "estimate": mu,
        "se": se,
        "ci_low": mu - t_crit * se,
        "ci_high": mu + t_crit * se,
        "p_two_sided": p,
        "df": k - 1,
        "tau2": tau2,
        "q": q,
        "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
        "se_dl": float(np.sqrt(1 / np.sum(w_re))),
    }


def pool_replications(groups: Sequence[Sequence[float]], confidence: float = 0.95) -> dict[str, float]:
    """Replications as the unit: the random-effects pool of their mean fold differences, the exact
    two-sided sign-flip test over those means, and the leave-one-out range of the pooled estimate
    (how much one replication moves it)."""
    means = [float(np.mean(g)) for g in groups]
    variances = [within_variance(g) for g in groups]
    pool = random_effects(means, variances, confidence)
    loo = (
        [
            random_effects(np.delete(means, i), np.delete(variances, i), confidence)["estimate"]
            for i in range(len(means))
        ]
        if len(means) >= 3
        else [float("nan")]
    )
    return {
        **pool,
        "p_sign_flip": sign_flip(means, "two-sided"),
        "p_sign_flip_floor": sign_flip_floor(len(means), "two-sided"),
        "loo_min": float(np.min(loo)),
        "loo_max": float(np.max(loo)),
        "plain_mean": float(np.mean(np.concatenate([np.asarray(g, float) for g in groups]))),
    }
