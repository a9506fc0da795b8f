"""DF-Merge against a direct computation of its definition on real tiny BERTs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from mergesweep.errors import ConfigError
from mergesweep.merge import PrepareContext, build_method
from mergesweep.merge.dfmerge import EPS
from mergesweep.plan import MergePlan

from .conftest import bert_batches, bert_logits

SAMPLES = 4  # of the 6 rows bert_batches gives: the fixed subset is a real choice


def subset(batches, k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """The rows DF-Merge must use for expert k: SAMPLES of 6, drawn with the study seed."""
    rows = [{n: v[b : b + 1] for n, v in batch.items()} for batch in batches for b in range(3)]
    assert len(rows) == 6
    pick = np.sort(np.random.default_rng(seed * 1_000_003 + k).choice(6, SAMPLES, replace=False))
    return [rows[i] for i in pick]


def direct_fisher(model, rows, names) -> dict[str, torch.Tensor]:
    """E_x Σ_y p(y|x) (∇ log p(y|x))² by tensor name, one backward per class."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    for x in rows:
        probs = torch.softmax(model(**x).logits[0], -1).detach()
        for y in range(probs.numel()):
            model.zero_grad()
            torch.log_softmax(model(**x).logits[0], -1)[y].backward()
            for n in names:
                total[n] += probs[y] * params[n].grad.square()
    return {n: t / len(rows) for n, t in total.items()}


def direct_dfmerge(pool, lambdas, batches) -> dict[str, torch.Tensor]:
    """θ₀ + M·Σᵢ Fᵢ⊙λᵢτᵢ ⊘ ΣFᵢ with Fᵢ at θ₀ + λᵢτᵢ, each expert loaded from its folder."""
    base = BertForSequenceClassification.from_pretrained(pool.spec.base).state_dict()
    names = pool.layout.names
    num = {n: torch.zeros_like(base[n]) for n in names}
    den = {n: torch.zeros_like(base[n]) for n in names}
    for k, path in enumerate(pool.spec.experts.values()):
        model = BertForSequenceClassification.from_pretrained(path).eval()
        sd = model.state_dict()
        tau = {n: sd[n] - base[n] for n in names}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in tau:
                    p.copy_(base[n] + lambdas[k] * tau[n])
        fisher = direct_fisher(model, subset(batches, k), names)
        for n in names:
            f = fisher[n] + EPS
            num[n] += f * lambdas[k] * tau[n]
            den[n] += f
    M = len(lambdas)
    return {n: base[n] + M * num[n] / den[n] for n in names}


def ids_context(pool) -> PrepareContext:
    """Token ids without an attention mask: BERT then runs under ``torch.func.vmap``."""

    def batches():
        return [{"input_ids": b["input_ids"]} for b in bert_batches()]

    return PrepareContext(
        seed=0,
        batches={t: batches for t in pool.experts},
        logits={t: bert_logits for t in pool.experts},
    )


# (experts, input kind, Fisher path): with an attention mask BERT's mask code branches on
# data, which vmap refuses: the method must fall back to one backward per class by itself.
CASES = [(2, "ids", True), (3, "ids", True), (2, "ids", False), (2, "masked", False)]


@pytest.mark.parametrize(("n_experts", "inputs", "batched"), CASES)
def test_merge_matches_the_definition(bert_pool, context, n_experts, inputs, batched):
    pool = bert_pool(n_experts)
    ctx = ids_context(pool) if inputs == "ids" else context(pool)
    method = build_method("dfmerge", {"samples": SAMPLES})
    method.prepare(pool, ctx)
    if inputs == "ids":
        method._batched = batched  # torch.func Jacobians, or one backward per class
    lambdas = [0.9, 0.35, 0.6][:n_experts]
    method.apply(pool, MergePlan.uniform(pool.layout.num_tensors, lambdas))
    want = direct_dfmerge(pool, lambdas, ctx.batches["t0"]())
    for i, n in enumerate(pool.layout.names):
        torch.testing.assert_close(pool.flat_view(pool.live, i), want[n], rtol=2e-4, atol=1e-6)
    # The merge is not task arithmetic: the Fisher reweights entries.
    ta = pool.base + sum(lam * pool.tau[k] for k, lam in enumerate(lambdas))
    assert (pool.live - ta).abs().max() > 1e-3
    assert method._batched == batched  # the path the case names really ran


def test_sampled_classes_are_seeded_and_differ_from_the_exact_fisher(bert_pool, context):
    pool = bert_pool(2)
    plan = MergePlan.uniform(pool.layout.num_tensors, [0.6, 0.4])
    merges = []
    for exact, batched in ((False, True), (False, False), (True, True)):
        method = build_method("dfmerge", {"samples": SAMPLES, "exact": exact})
        method.prepare(pool, ids_context(pool))
        method._batched = batched
        method.apply(pool, plan)
        merges.append(pool.live.clone())
    torch.testing.assert_close(merges[0], merges[1], rtol=2e-4, atol=1e-6)  # same draws
    assert not torch.allclose(merges[0], merges[2], rtol=1e-3)


def test_fisher_depends_on_the_coefficients_and_the_subset_is_fixed(bert_pool, context):
    pool = bert_pool(2)
    method = build_method("dfmerge", {"samples": SAMPLES})
    method.prepare(pool, context(pool))
    T = pool.layout.num_tensors
    method.apply(pool, MergePlan.uniform(T, [0.2, 0.0]))
    f_low = method.last_fisher.clone()  # F of expert t1 at λ = 0: the base with t1's head
    method.apply(pool, MergePlan.uniform(T, [0.2, 1.0]))
    assert not torch.allclose(method.last_fisher, f_low, rtol=1e-2)
    first = pool.live.clone()
    method.apply(pool, MergePlan.uniform(T, [0.5, 0.5]))
    method.apply(pool, MergePlan.uniform(T, [0.2, 1.0]))
    assert torch.equal(pool.live, first)  # same λ, same subset: the same merge


def test_without_fisher_it_is_task_arithmetic_with_per_model_lambdas(bert_pool, context):
    pool = bert_pool(3)
    off = build_method("dfmerge", {"fisher": False})
    off.prepare(pool, PrepareContext())  # needs no data
    lambdas = [0.7, 0.1, 0.45]
    off.apply(pool, MergePlan.uniform(pool.layout.num_tensors, lambdas))
    want = pool.base.double() + sum(lam * pool.tau[k].double() for k, lam in enumerate(lambdas))
    torch.testing.assert_close(pool.live.double(), want, rtol=0, atol=1e-6)
    # With the Fisher and λᵢ = 0 for all but one expert, DF-Merge gives θ₀ + M·Fⱼλⱼτⱼ/ΣFᵢ:
    # entries where only expert j is sensitive move by M·λⱼτⱼ, not λⱼτⱼ.
    on = build_method("dfmerge", {"samples": SAMPLES})
    on.prepare(pool, context(pool))
    on.apply(pool, MergePlan.uniform(pool.layout.num_tensors, [0.5, 0.0, 0.0]))
    assert not torch.allclose(pool.live, pool.base + 0.5 * pool.tau[0], atol=1e-4)


def test_bad_options_and_missing_data(bert_pool):
    with pytest.raises(ConfigError, match=r"method\.options\.samples: expected a positive"):
        build_method("dfmerge", {"samples": 0})
    with pytest.raises(ConfigError, match=r"method\.options\.fisher: expected true or false"):
        build_method("dfmerge", {"fisher": "no"})
    with pytest.raises(ConfigError, match=r"method\.options\.eps: expected a positive number"):
        build_method("dfmerge", {"eps": 0})
    pool = bert_pool(2)
    with pytest.raises(ConfigError, match=r"dfmerge needs objective data for task t0"):
        build_method("dfmerge").prepare(pool, PrepareContext())
