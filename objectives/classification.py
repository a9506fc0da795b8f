"""Classification metrics over a task's data: accuracy, cross-entropy, prediction entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mergesweep.objectives.data import DataObjective

__all__ = ["Accuracy", "CrossEntropy", "Entropy", "prediction_entropy"]

EPS = 1e-8  # inside the log, as in AdaMerging's reference code


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy H(p) = −Σ p log(p + 1e-8) of ``softmax(logits)``, in nats."""
    p = logits.softmax(-1)
    return -(p * (p + EPS).log()).sum(-1)


class Accuracy(DataObjective):
    """Fraction of examples whose arg-max logit is the label (maximize).

    Example config::

        objectives:
          tasks:
            low: {kind: accuracy, data: data/low, split: validation, samples: 256}
    """

    kind = "accuracy"
    metric = "accuracy"
    direction = "maximize"

    def scores(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None  # needs_labels
        return (logits.argmax(-1) == labels).float()


class CrossEntropy(DataObjective):
    """Mean negative log-likelihood of the label, in nats (minimize)."""

    kind = "cross_entropy"
    metric = "cross_entropy"
    direction = "minimize"

    def scores(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None  # needs_labels
        return F.cross_entropy(logits, labels, reduction="none")


class Entropy(DataObjective):
    """Mean prediction entropy on unlabelled inputs, H(p) = −Σ p log(p + 1e-8) (minimize).

    AdaMerging's unsupervised objective; the ``label`` column is not read.
    """

    kind = "entropy"
    metric = "entropy"
    direction = "minimize"
    needs_labels = False

    def scores(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return prediction_entropy(logits)
