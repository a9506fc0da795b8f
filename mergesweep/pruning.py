"""Multi-fidelity pruning: score a trial on nested prefixes of the evaluation subsets (rungs)
and stop it as soon as a pruner says it cannot win.

Rung ``k`` is reported to Optuna as ``step=k`` (``trial.report``), so the study's intermediate
values are the rung scores and any Optuna tool reads them. Survivors of the last rung are scored
on the full subsets and told COMPLETE with exactly the metrics a run without pruning would
store; pruned trials are told PRUNED with their last rung's metrics. The budget counts both
(Optuna's convention for ``n_trials``); the best value comes from complete trials only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mergesweep.config import ExperimentConfig, PruningConfig
from mergesweep.errors import ConfigError
from mergesweep.objectives.base import prefix_size

__all__ = [
    "BestPruner",
    "HalvingPruner",
    "PairedPruner",
    "Rungs",
    "build_pruner",
    "check_pruning",
    "contention",
    "ordered_gap",
    "paired_gap",
    "task_weights",
]

EXAMPLES_ATTR = "examples"  # a complete trial's per-example metric per task (paired pruner)


def _sign(study: optuna.Study) -> float:
    """+1 when larger values are better, so ``sign * value`` is always maximised."""
    return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


class HalvingPruner(BasePruner):
    """Asynchronous successive halving over rung indices: a trial goes on from rung ``k`` only
    if its value is among the best ``max(1, n // reduction)`` of the ``n`` trials (any state)
    that reported rung ``k`` so far. Optuna's own pruner wants steps ``r^k``; rungs here are
    ``0, 1, ...``.

    With ``window`` above 0 the ranking is among the last ``window`` trials (by number) that
    reported rung ``k``, the trial itself included. A model-based sampler proposes better points
    as the study goes on, so against every trial since the start (the random startup ones too)
    ever more of them rank in the top 1/``reduction`` and climb; against recent trials the bar
    rises with the sampler and about 1/``reduction`` of the trials climb each rung.
    """

    def __init__(self, reduction: int = 3, startup_trials: int = 5, window: int = 0) -> None:
        self.reduction = reduction
        self.startup_trials = startup_trials
        self.window = window

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < self.startup_trials:
            return False
        sign = _sign(study)
        value = sign * trial.intermediate_values[step]
        reported = {
            t.number: sign * t.intermediate_values[step]
            for t in trials
            if step in t.intermediate_values
        }
        reported[trial.number] = value  # not read back yet, perhaps: count it
        if self.window:
            reported = {n: reported[n] for n in sorted(reported)[-self.window :]}
        values = list(reported.values())
        keep = max(1, len(values) // self.reduction)
        return value < sorted(values, reverse=True)[keep - 1]


class BestPruner(BasePruner):
    """Prunes a trial whose rung value is worse than the best complete trial's value *at the
    same rung* by more than ``margin`` (in the study value's units): on the same examples it
    trails the best, so by this evidence it cannot beat it.

    Same rung, same examples: a rung's prefix can be easier or harder than the whole subset
    (on the text zoo the 10% prefix scores ~0.05 above the full subset for every trial, with a
    spread of only ~0.01), so comparing a prefix score with a full score would prune nothing,
    or everything. A best trial without that rung's value (it ran before pruning was enabled)
    is compared by its final value.
    """

    def __init__(self, margin: float = 0.0, startup_trials: int = 5) -> None:
        self.margin = margin
        self.startup_trials = startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        complete = _complete(study)
        if step is None or len(complete) < self.startup_trials or not complete:
            return False
        sign = _sign(study)
        best = max(complete, key=lambda t: sign * t.values[0])
        bar = best.intermediate_values.get(step, best.values[0])
        return sign * trial.intermediate_values[step] < sign * bar - self.margin


Examples = Mapping[str, "np.ndarray | list[float]"]
PRIOR_WEIGHT = 2.0  # pseudo-examples of the reference's own spread in each variance estimate


def paired_gap(
    own: Examples, ref: Examples, weights: Mapping[str, float], sign: float = 1.0
) -> tuple[float, float]:
    """Mean and standard deviation of the predicted full-subset difference ``own − ref`` in
    study value units (``sign`` +1 when larger is better), from the examples seen so far.

    ``own[t]`` holds the trial's metric on the first ``n`` examples of task ``t``'s fixed
    order, ``ref[t]`` the reference's on all ``N`` of them; the value is ``Σ w_t · mean_t``.
    Per task, the paired differences ``d`` on the first ``n`` examples have mean ``m`` and
    variance ``s²``; the difference of the full means is then about normal with mean ``m`` and
    variance ``s² (N − n) / (n N)`` (the unseen ``N − n`` examples' sum, and the error in ``m``).
    ``s²`` is shrunk towards the reference's own per-example variance with ``PRIOR_WEIGHT``
    pseudo-examples, so a few agreeing examples do not make a confident verdict.
    """
    mean = var = 0.0
    for task, w in weights.items():
        r = np.asarray(ref[task], dtype=np.float64)
        x = np.asarray(own[task], dtype=np.float64)
        n, big_n = len(x), len(r)
        if n == 0 or big_n == 0:
            continue
        d = sign * (x - r[:n])
        m = float(d.mean())
        s2 = (float(((d - m) ** 2).sum()) + PRIOR_WEIGHT * float(r.var())) / (n - 1 + PRIOR_WEIGHT)
        mean += w * m
        var += w * w * s2 * max(big_n - n, 0) / (n * big_n)
    return mean, math.sqrt(var)


def contention(ref: Examples, others: list[Examples], tasks: list[str]) -> dict[str, np.ndarray]:
    """Per task and example, the expected squared difference between a new trial and the
    reference ``ref`` (the best complete trial): the mean over ``others`` (the other complete
    trials) of ``(x − ref)²``, shrunk towards the task's mean with ``PRIOR_WEIGHT``
    pseudo-trials, so an example no trial has disagreed on yet keeps a little variance."""
    out: dict[str, np.ndarray] = {}
    for task in tasks:
        r = np.asarray(ref[task], dtype=np.float64)
        rows = [np.asarray(o[task], dtype=np.float64) for o in others]
        sq = np.mean([(x - r) ** 2 for x in rows], axis=0) if rows else np.zeros_like(r)
        out[task] = (len(rows) * sq + PRIOR_WEIGHT * float(sq.mean())) / (len(rows) + PRIOR_WEIGHT)
    return out


def ordered_gap(
    own: Examples,
    positions: Mapping[str, np.ndarray | list[int]],
    ref: Examples,
    variance: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    sign: float = 1.0,
) -> tuple[float, float]:
    """Mean and standard deviation of the full-subset difference ``own − ref`` (study value
    units) for a trial scored on chosen examples (the ``contentious`` order), not a random
    prefix.

    The examples seen are known exactly: ``own[t][j]`` is the metric at ``positions[t][j]``,
    ``ref[t]`` the reference's on all ``N`` examples in their natural order, and each adds
    ``d / N`` to task ``t``'s mean. Each unseen example ``i`` adds a difference of mean 0 and
    variance ``variance[t][i]`` (:func:`contention`), scaled by how much this trial disagreed
    on its seen examples against what ``variance`` expected there (shrunk towards 1 with
    ``PRIOR_WEIGHT`` pseudo-examples of the task's mean variance): a trial far from the
    reference is expected to differ on the rest too.
    """
    mean = var = 0.0
    for task, w in weights.items():
        r = np.asarray(ref[task], dtype=np.float64)
        x = np.asarray(own[task], dtype=np.float64)
        big_n = len(r)
        if big_n == 0:
            continue
        p = np.asarray(positions[task], dtype=np.int64)[: len(x)]
        v = np.asarray(variance[task], dtype=np.float64)
        d = sign * (x - r[p])
        unseen = np.ones(big_n, dtype=bool)
        unseen[p] = False
        prior = PRIOR_WEIGHT * float(v.mean())
        expected = float(v[p].sum()) + prior
        scale = (float((d * d).sum()) + prior) / expected if expected > 0 else 1.0
        mean += w * float(d.sum()) / big_n
        var += w * w * scale * float(v[unseen].sum()) / big_n**2
    return mean, math.sqrt(var)


class PairedPruner(BasePruner):
    """Prunes a trial that has less than ``1 − confidence`` chance of matching the best complete
    trial on the full subsets, judged example by example on the prefix it has been scored on.

    Two merges of the same pool agree on most examples, so the paired differences have a small
    variance, and a trial that trails the best is told apart after a few dozen examples, while
    ranking rung scores across trials (``halving``, ``median``) needs large gaps. The trial's
    per-example metrics come from the driver (:meth:`note`), the best trial's from the same
    cache or its ``examples`` user attr (written when it completed; a best trial without one
    prunes nothing). ``weights``: each task's weight in the study value (mean: 1/T each).
    """

    def __init__(
        self, weights: Mapping[str, float], confidence: float = 0.9, startup_trials: int = 5
    ) -> None:
        self.weights = dict(weights)
        self.confidence = confidence
        self.z = NormalDist().inv_cdf(confidence)
        self.startup_trials = startup_trials
        self._examples: dict[int, dict[str, np.ndarray]] = {}
        self._positions: dict[int, dict[str, np.ndarray]] = {}
        self._contention: tuple[tuple[int, int], dict[str, np.ndarray]] | None = None

    def note(
        self,
        number: int,
        examples: Examples,
        positions: Mapping[str, np.ndarray | list[int]] | None = None,
    ) -> None:
        """Trial ``number``'s per-example metric per task so far: its prefix, or every example
        once it is complete; with ``positions``, the examples at those positions (in that
        order) of a trial on the ``contentious`` order."""
        self._examples[number] = {t: np.asarray(v, dtype=np.float64) for t, v in examples.items()}
        if positions is None:
            self._positions.pop(number, None)
        else:
            self._positions[number] = {
                t: np.asarray(p, dtype=np.int64) for t, p in positions.items()
            }

    def _best_and_contention(
        self, study: optuna.Study
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """The best complete trial's examples and the per-example :func:`contention` of the
        other complete trials against it (recomputed when the best or their count changes);
        ``None`` before two complete trials with examples exist."""
        complete = _complete(study)
        if len(complete) < max(self.startup_trials, 2):
            return None
        sign = _sign(study)
        best = max(complete, key=lambda t: sign * t.values[0])
        ref = self.reference(best)
        if ref is None:
            return None
        key = (best.number, len(complete))
        if self._contention is None or self._contention[0] != key:
            others = [r for t in complete if t is not best and (r := self.reference(t)) is not None]
            if not others:
                return None
            self._contention = (key, contention(ref, others, list(self.weights)))
        return ref, self._contention[1]

    def order(self, study: optuna.Study) -> dict[str, np.ndarray] | None:
        """Per task, every position of the fixed order, the most contentious first (ties keep
        the seeded order, a random one): the order a new trial on ``pruning.order:
        contentious`` is scored in. ``None`` until the study has two complete trials with
        examples (then the trial climbs the seeded prefixes)."""
        stats = self._best_and_contention(study)
        if stats is None:
            return None
        return {t: np.argsort(-v, kind="stable") for t, v in stats[1].items()}

    def reference(self, trial: FrozenTrial) -> dict[str, np.ndarray] | None:
        """A complete trial's per-example metrics: cached, else its stored user attr."""
        if trial.number not in self._examples:
            stored = trial.user_attrs.get(EXAMPLES_ATTR)
            if not isinstance(stored, dict) or not all(t in stored for t in self.weights):
                return None
            self.note(trial.number, stored)
        return self._examples[trial.number]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        own = self._examples.get(trial.number)
        if trial.last_step is None or own is None or not all(t in own for t in self.weights):
            return False
        sign = _sign(study)
        positions = self._positions.get(trial.number)
        if positions is not None:
            stats = self._best_and_contention(study)
            if stats is None:
                return False
            mean, sd = ordered_gap(own, positions, stats[0], stats[1], self.weights, sign)
        else:
            complete = _complete(study)
            if not complete or len(complete) < self.startup_trials:
                return False
            ref = self.reference(max(complete, key=lambda t: sign * t.values[0]))
            if ref is None:
                return False
            mean, sd = paired_gap(own, ref, self.weights, sign)
        if mean + self.z * sd >= 0.0:
            return False
        del self._examples[trial.number]  # pruned: never a reference
        self._positions.pop(trial.number, None)
        return True


def task_weights(cfg: ExperimentConfig) -> dict[str, float]:
    """Each task's weight in the study value (``mean``: equal; ``weighted``: normalised)."""
    tasks = list(cfg.objectives.tasks)
    if cfg.objectives.mode == "weighted" and cfg.objectives.weights:
        total = sum(cfg.objectives.weights[t] for t in tasks)
        return {t: cfg.objectives.weights[t] / total for t in tasks}
    return {t: 1.0 / len(tasks) for t in tasks}


def build_pruner(cfg: PruningConfig, weights: Mapping[str, float] | None = None) -> BasePruner:
    """The Optuna pruner ``pruning.pruner`` names (``none``: a pruner that never prunes);
    ``weights``: the tasks' weights in the study value (:func:`task_weights`), for ``paired``."""
    if cfg.pruner == "paired":
        return PairedPruner(weights or {}, cfg.confidence, cfg.startup_trials)
    if cfg.pruner == "median":
        return MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)
    if cfg.pruner == "halving":
        return HalvingPruner(cfg.reduction, cfg.startup_trials, cfg.window)
    if cfg.pruner == "best":
        return BestPruner(cfg.margin, cfg.startup_trials)
    return NopPruner()


def check_pruning(cfg: ExperimentConfig, objectives: dict[str, Any], searcher: Any) -> None:
    """Refuse pruning for objectives that cannot score a prefix and searchers with a loop of
    their own (the config module checks the rest: rungs, pareto, tune)."""
    if cfg.pruning.pruner == "none":
        return
    for task, obj in objectives.items():
        if not obj.prefixes:
            raise ConfigError(
                f"pruning.pruner: objectives.tasks.{task} (kind '{obj.kind}') cannot score a "
                "prefix of its subset; use accuracy/cross_entropy/entropy objectives, or "
                "pruning.pruner: none"
            )
    from mergesweep.search import Searcher

    if type(searcher).drive is not Searcher.drive:
        raise ConfigError(
            f"pruning.pruner: searcher '{searcher.name}' runs its own loop, which does not "
            "prune; use pruning.pruner: none"
        )


@dataclass
class _Ladder:
    """One trial's way up the rungs: the rung it is on and what each rung measured."""

    rung: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, tuple[float, int]] = field(default_factory=dict)  # task -> (sum, count)
    examples: dict[str, list[float]] = field(default_factory=dict)  # task -> per-example metric
    order: dict[str, np.ndarray] | None = None  # contentious: positions in scoring order


class Rungs:
    """The driver's bookkeeping of trials climbing the rungs (``fractions`` ends with 1.0).

    A rung scores only the examples the rung below did not (``Job.start``), so a trial that
    climbs to the top costs one evaluation of the full subsets, not one plus its rungs.
    """

    def __init__(self, cfg: PruningConfig) -> None:
        on = cfg.pruner != "none"
        self.fractions = [*cfg.rungs, 1.0] if on else [1.0]
        self.paired = cfg.pruner == "paired"  # jobs return per-example metrics
        self.contentious = self.paired and cfg.order == "contentious"
        self._ladders: dict[int, _Ladder] = {}

    @property
    def enabled(self) -> bool:
        return len(self.fractions) > 1

    def fraction(self, number: int) -> float:
        """The fraction of each task's subset trial ``number`` is to be scored on next."""
        return self.fractions[self._ladders.setdefault(number, _Ladder()).rung]

    def start(self, number: int) -> float:
        """The prefix trial ``number`` has already been scored on (0 before its first rung)."""
        rung = self._ladders.setdefault(number, _Ladder()).rung
        return self.fractions[rung - 1] if rung else 0.0

    def assign(self, number: int, order: Mapping[str, np.ndarray] | None) -> None:
        """Give trial ``number`` its own scoring order (per task, every position of the fixed
        order), before its first rung; ``None`` keeps the seeded prefixes."""
        ladder = self._ladders.setdefault(number, _Ladder())
        if not ladder.rung and order is not None:
            ladder.order = {t: np.asarray(o, dtype=np.int64) for t, o in order.items()}

    def needs_order(self, number: int) -> bool:
        """Whether trial ``number`` is about to start and should be given an order."""
        ladder = self._ladders.setdefault(number, _Ladder())
        return self.contentious and ladder.rung == 0 and ladder.order is None

    def positions(self, number: int) -> dict[str, list[int]] | None:
        """The positions trial ``number``'s next rung scores, per task (``None``: the seeded
        prefixes between :meth:`start` and :meth:`fraction`)."""
        ladder = self._ladders.setdefault(number, _Ladder())
        if ladder.order is None:
            return None
        lo, hi = self.start(number), self.fraction(number)
        return {
            t: o[prefix_size(lo, len(o)) : prefix_size(hi, len(o))].tolist()
            for t, o in ladder.order.items()
        }

    def accumulate(self, number: int, result: Any) -> None:
        """Fold a rung's result (means over the examples it scored, ``result.counts``) into
        the trial's sums and turn ``result.metrics`` into the means over the whole prefix."""
        if not self.enabled or not result.ok or not result.counts:
            return
        ladder = self._ladders.setdefault(number, _Ladder())
        for task, values in result.examples.items():
            ladder.examples.setdefault(task, []).extend(values)
        sums = ladder.sums
        for task, value in result.metrics.items():
            total, count = sums.get(task, (0.0, 0))
            n = result.counts.get(task, 0)
            total, count = total + value * n, count + n
            sums[task] = (total, count)
            result.metrics[task] = total / count if count else value

    def evidence(self, number: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray] | None]:
        """Trial ``number``'s per-example metric per task over every rung so far (paired) and
        the positions they were scored at, in scoring order; ``None`` for the positions on the
        seeded prefixes, and once every example is scored (the values are then in the fixed
        order, positions 0..N−1, as a complete trial stores them)."""
        ladder = self._ladders.setdefault(number, _Ladder())
        if ladder.order is None:
            return ladder.examples, None
        seen = {t: len(ladder.examples.get(t, [])) for t in ladder.order}
        if any(seen[t] < len(o) for t, o in ladder.order.items()):
            return ladder.examples, {t: o[: seen[t]] for t, o in ladder.order.items()}
        natural: dict[str, list[float]] = {}
        for task, order in ladder.order.items():
            values = np.empty(len(order), dtype=np.float64)
            values[order] = ladder.examples[task]
            natural[task] = values.tolist()
        return natural, None

    def is_last(self, number: int) -> bool:
        ladder = self._ladders.setdefault(number, _Ladder())
        return ladder.rung == len(self.fractions) - 1

    def record(self, number: int, value: float | None, result: Any) -> dict[str, Any]:
        """Note one rung's result for trial ``number``; returns the record."""
        ladder = self._ladders.setdefault(number, _Ladder())
        rec = {
            "rung": ladder.rung,
            "fraction": self.fractions[ladder.rung],
            "value": value,
            "metrics": dict(result.metrics),
            "examples": dict(result.counts),  # scored by this rung (the rest: rungs below)
            "order": "seeded" if ladder.order is None else "contentious",
            "merge_s": result.timings.get("merge_s", 0.0),
            "eval_s": result.timings.get("eval_s", 0.0),
        }
        ladder.records.append(rec)
        return rec

    def promote(self, number: int) -> None:
        self._ladders[number].rung += 1

    def close(self, number: int, timings: dict[str, float]) -> list[dict[str, Any]]:
        """Forget trial ``number``; fold its rungs into ``timings`` (totals and per-rung eval
        time) and return the rung records for its ``rungs`` user attr."""
        ladder = self._ladders.pop(number, _Ladder())
        if not self.enabled or not ladder.records:
            return []
        for key in ("merge_s", "eval_s"):
            timings[key] = math.fsum(r[key] for r in ladder.records)
        for r in ladder.records:
            timings[f"eval_s_rung{r['rung']}"] = r["eval_s"]
        return ladder.records
