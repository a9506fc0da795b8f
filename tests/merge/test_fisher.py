"""Fisher-weighted averaging against an independent per-sample Fisher on real tiny BERTs."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from mergesweep.errors import ConfigError
from mergesweep.merge import PrepareContext, build_method
from mergesweep.merge.fisher import FLOOR

SAMPLES = 6


def class_grads(model, batches) -> list[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
    """Per example: p(y|x) and, per class, the squared gradient of log p(y|x) by tensor name."""
    params = dict(model.named_parameters())
    out = []
    for batch in batches:
        for b in range(batch["input_ids"].shape[0]):
            one = {k: v[b : b + 1] for k, v in batch.items()}
            probs = torch.softmax(model(**one).logits[0], -1).detach()
            per_class = []
            for y in range(probs.numel()):
                model.zero_grad()
                torch.log_softmax(model(**one).logits[0], -1)[y].backward()
                per_class.append({n: p.grad.detach().square().clone() for n, p in params.items()})
            out.append((probs, per_class))
    return out


def independent_fisher(path: str, batches, names) -> dict[str, torch.Tensor]:
    """E_x Σ_y p(y|x) (∇ log p(y|x))², floored, on the expert loaded straight from its folder."""
    model = BertForSequenceClassification.from_pretrained(path).eval()
    examples = class_grads(model, batches)
    fisher = {}
    for n in names:
        total = sum(
            sum(probs[y] * g[n] for y, g in enumerate(per_class)) for probs, per_class in examples
        )
        fisher[n] = (total / len(examples)).clamp(min=FLOOR)
    return fisher


@pytest.mark.parametrize("n_experts", [1, 2, 8])
def test_fisher_matches_independent_computation(bert_pool, context, plan, n_experts):
    pool = bert_pool(n_experts)
    ctx = context(pool)
    method = build_method("fisher", {"samples": SAMPLES})
    method.prepare(pool, ctx)
    p = plan(pool, seed=n_experts)
    method.apply(pool, p)
    batches = ctx.batches["t0"]()
    names = pool.layout.names
    fishers = [independent_fisher(path, batches, names) for path in pool.spec.experts.values()]
    thetas = [
        BertForSequenceClassification.from_pretrained(path).state_dict()
        for path in pool.spec.experts.values()
    ]
    for i, n in enumerate(names):
        for k in range(n_experts):
            got_f = pool.flat_view(method.fisher[k], i)
            torch.testing.assert_close(got_f, fishers[k][n], rtol=2e-3, atol=1e-9)
        num = sum(p.coefficients[i, k] * fishers[k][n] * thetas[k][n] for k in range(n_experts))
        den = sum(p.coefficients[i, k] * fishers[k][n] for k in range(n_experts))
        torch.testing.assert_close(pool.flat_view(pool.live, i), num / den, rtol=1e-4, atol=1e-5)


def test_sampled_fisher_is_one_class_squared_gradient(bert_pool, context):
    pool = bert_pool(1)
    first = context(pool).batches["t0"]()[0]
    one = [{k: v[:1] for k, v in first.items()}]
    ctx = PrepareContext(
        seed=5, batches={"t0": lambda: one}, logits={"t0": lambda m, b: m(**b).logits}
    )
    method = build_method("fisher", {"samples": 1, "exact": False})
    method.prepare(pool, ctx)
    model = BertForSequenceClassification.from_pretrained(pool.spec.experts["t0"]).eval()
    ((_, per_class),) = class_grads(model, one)
    names = pool.layout.names

    def matches(g) -> bool:
        return all(
            torch.allclose(pool.flat_view(method.fisher[0], i), g[n].clamp(min=FLOOR), rtol=2e-3)
            for i, n in enumerate(names)
        )

    assert sum(matches(g) for g in per_class) == 1
    again = build_method("fisher", {"samples": 1, "exact": False})
    again.prepare(pool, ctx)
    assert torch.equal(again.fisher, method.fisher)  # seeded


def test_prepare_restores_the_live_weights(bert_pool, context, plan):
    pool = bert_pool(2)
    build_method("linear").apply(pool, plan(pool, seed=9))
    before = pool.live.clone()
    flags = [t.requires_grad for t in pool.merged_tensors("t0")]
    build_method("fisher", {"samples": 2}).prepare(pool, context(pool))
    assert torch.equal(pool.live, before)
    assert [t.requires_grad for t in pool.merged_tensors("t0")] == flags


def test_missing_task_data_is_refused(bert_pool, context):
    pool = bert_pool(2)
    ctx = context(pool)
    del ctx.batches["t1"]
    with pytest.raises(ConfigError, match=r"method\.name: fisher needs objective data for task t1"):
        build_method("fisher").prepare(pool, ctx)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"samples": 0}, "method.options.samples: expected a positive integer"),
        ({"exact": "yes"}, "method.options.exact: expected true or false"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("fisher", options)
