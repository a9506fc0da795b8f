"""The ``lm`` zoo: a small GPT-2 trained locally, topic and sentiment experts, lm-eval tasks.

Recipe (every number is in :data:`RECIPE`, hashed into the zoo's folder name):

* tokenizer: byte-level BPE (vocabulary 2,048) trained with ``tokenizers`` on the train splits
  of the three corpora of :mod:`mergesweep.zoo.corpora` (BBC news, tweets, chatterbot);
* base: ``GPT2LMHeadModel`` (4 layers, n_embd 128, 4 heads, 128 positions, tied input/output
  embeddings, ~1M parameters) pre-trained on the raw train texts, 800 steps of 32 windows of
  64 tokens, AdamW lr 3e-3;
* experts ``topic`` and ``sentiment``: the base fine-tuned 400 steps on prompts
  ``"Article: {title}. {body[:250]}\\nTopic: X"`` and ``"Tweet: {text}\\nSentiment: X"`` with
  the loss on the answer tokens only;
* lm-eval multiple-choice tasks over local jsonl files (``<zoo>/data``), written into
  ``<zoo>/tasks`` (``include_path`` for ``lm_eval.tasks.TaskManager``), whose loader module reads
  the data relative to itself (the zoo folder may move): ``ms_topic``/``ms_sentiment`` score the
  validation split, ``ms_topic_test``/``ms_sentiment_test`` the test split.

Every tensor is merged (no per-task head: ``lm_head`` is tied to ``wte``), so all task models of
a pool are the same merged model. The build measures the multiple-choice accuracy (the sum of
the answer tokens' log-probabilities, as lm-eval's ``acc``) of the experts, the base and task
arithmetic on the test split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mergesweep.zoo import corpora
from mergesweep.zoo._common import build_env, progress_bar, scores, versions

__all__ = ["EOS", "LM_EVAL_TASKS", "PROMPTS", "RECIPE", "TASKS", "build"]

TASKS = ("topic", "sentiment")
EOS = "<|endoftext|>"
LAMBDAS = (0.5, 1.0)
# lm-eval's doc_to_text (jinja) and the training prompt share one template per task.
PROMPTS = {
    "topic": ("Article: {title}. {body}\nTopic:", "Article: {{title}}. {{body}}\nTopic:"),
    "sentiment": ("Tweet: {text}\nSentiment:", "Tweet: {{text}}\nSentiment:"),
}

RECIPE: dict[str, Any] = {
    "version": 1,
    "data": {
        "dedupe": "topic: one article per title; sentiment, language: one per text",
        "seed": 0,
        "body_chars": 250,
        "min_words": 3,
        "per_language": 250,
        "splits": {
            "topic": {"train": None, "validation": 300, "test": 300},
            "sentiment": {"train": 6000, "validation": 500, "test": 500},
            "language": {"train": None, "validation": 300, "test": 300},
        },
    },
    "tokenizer": {"kind": "byte-level BPE", "vocab_size": 2048, "min_frequency": 2},
    "gpt2": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 128},
    "pretrain": {
        "optimizer": "AdamW(fused, weight_decay=0.01), grad clip 1.0",
        "lr": 3e-3,
        "batch": 32,
        "tokens": 64,
        "steps": 800,
    },
    "experts": {
        "optimizer": "AdamW(fused, weight_decay=0.01), grad clip 1.0",
        "lr": 1e-3,
        "batch": 16,
        "steps": 400,
        "loss": "answer tokens only",
    },
    "seed": 0,
}


# The lm-eval tasks a built zoo's ``tasks/`` folder defines, and the expert each one scores.
LM_EVAL_TASKS = {
    "ms_topic": "topic",
    "ms_topic_test": "topic",
    "ms_sentiment": "sentiment",
    "ms_sentiment_test": "sentiment",
}


# -- tokenizer ---------------------------------------------------------------------------------
def _train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = RECIPE["tokenizer"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"],
        min_frequency=cfg["min_frequency"],
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=128
    )


# -- data --------------------------------------------------------------------------------------
def _prompt(task: str, e: corpora.Example) -> str:
    return PROMPTS[task][0].format(**e.fields)


_LOADER = '''"""Loads the lm zoo's jsonl splits from beside this folder (written by mergesweep).

lm-eval calls these through ``custom_dataset: !function ms_lm_data.<task>``; paths are relative
to this file, so the zoo folder can move.
"""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent.parent / "data"


def _load(task):
    parts = {}
    for split in ("train", "validation", "test"):
        with (DATA / task / f"{split}.jsonl").open(encoding="utf-8") as fh:
            parts[split] = datasets.Dataset.from_list([json.loads(line) for line in fh])
    return datasets.DatasetDict(parts)


def topic(**kwargs):
    return _load("topic")


def sentiment(**kwargs):
    return _load("sentiment")
'''


def _write_tasks(folder: Path, tasks: dict[str, corpora.TaskData]) -> dict[str, int]:
    """jsonl data under ``data/`` and lm-eval YAMLs under ``tasks/``, whose loader module
    (``tasks/ms_lm_data.py``) reads the data relative to itself."""
    import yaml

    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "ms_lm_data.py").write_text(_LOADER)
    counts = {}
    for task, data in tasks.items():
        for split, examples in data.splits.items():
            path = folder / "data" / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as fh:
                for e in examples:
                    fh.write(json.dumps({**e.fields, "label": e.label}, ensure_ascii=False) + "\n")
            counts[f"{task}/{split}"] = len(examples)
        config: dict[str, Any] = {
            "task": f"ms_{task}",
            "tag": ["mergesweep_lm"],
            "output_type": "multiple_choice",
            "training_split": "train",
            "validation_split": "validation",
            "fewshot_split": "train",
            "doc_to_text": PROMPTS[task][1],
            "doc_to_target": "label",
            "doc_to_choice": list(data.label_names),
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True}
                for m in ("acc", "acc_norm")
            ],
            "metadata": {"version": 1.0},
        }
        # safe_dump cannot write the !function tag: it is the first line, written by hand.
        loader = f"custom_dataset: !function ms_lm_data.{task}\n"
        dump = {"default_flow_style": False, "sort_keys": False, "allow_unicode": True}
        text = loader + yaml.safe_dump(config, **dump)
        (folder / "tasks" / f"ms_{task}.yaml").write_text(text)
        test = {**config, "task": f"ms_{task}_test", "test_split": "test"}
        (folder / "tasks" / f"ms_{task}_test.yaml").write_text(
            loader + yaml.safe_dump(test, **dump)
        )
    return counts


class _Choices:
    """A split as (prompt ids, choice ids) pairs, encoded as lm-eval encodes them."""

    def __init__(self, tokenizer, task: str, data: corpora.TaskData, split: str) -> None:
        self.choices = [tokenizer.encode(" " + c) for c in data.label_names]
        self.prompts = [tokenizer.encode(_prompt(task, e)) for e in data.splits[split]]
        self.labels = [e.label for e in data.splits[split]]

    def pair(self, i: int, c: int, limit: int) -> tuple[list[int], list[int]]:
        """Prompt and answer ids, the prompt cut from the left to ``limit + 1`` tokens in all
        (the model reads all but the last: lm-eval's truncation)."""
        answer = self.choices[c]
        return self.prompts[i][-(limit + 1 - len(answer)) :], answer


def _batch(pairs: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and a mask of the answer positions (predicted at t−1)."""
    n = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    answer = torch.zeros((len(pairs), n), dtype=torch.bool)
    for r, (p, a) in enumerate(pairs):
        seq = p + a
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        answer[r, len(p) : len(seq)] = True
    return ids, mask, answer


def _answer_logprob(model, ids, mask, answer) -> torch.Tensor:
    """Per row, the summed log-probability of the answer tokens (the last token is only read
    as a target, so a row may hold ``n_positions + 1`` tokens)."""
    logp = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.log_softmax(-1)
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok * answer[:, 1:]).sum(-1)


@torch.inference_mode()
def _accuracy(model, data: _Choices, pad: int, limit: int) -> float:
    """Multiple-choice accuracy: the choice with the largest summed log-probability."""
    right, step = 0, 32
    if all(len(c) == 1 for c in data.choices):
        # One-token answers share the prompt: one forward per example (lm-eval's logits cache).
        answers = torch.tensor([c[0] for c in data.choices])
        for s in range(0, len(data.labels), step):
            rows = range(s, min(s + step, len(data.labels)))
            ids, mask, _ = _batch([(data.prompts[i][-limit:], []) for i in rows], pad)
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(rows)), mask.sum(1) - 1]
            pred = last.log_softmax(-1)[:, answers].argmax(-1)
            right += int((pred == torch.tensor([data.labels[i] for i in rows])).sum())
        return right / len(data.labels)
    for s in range(0, len(data.labels), step):
        rows = range(s, min(s + step, len(data.labels)))
        pairs = [data.pair(i, c, limit) for i in rows for c in range(len(data.choices))]
        lp = _answer_logprob(model, *_batch(pairs, pad)).view(len(rows), -1)
        right += int((lp.argmax(-1) == torch.tensor([data.labels[i] for i in rows])).sum())
    return right / len(data.labels)


# -- training ----------------------------------------------------------------------------------
def _optimizer(model, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=True)


def _step(model, opt, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _pretrain(model, stream: torch.Tensor, gen: torch.Generator, advance: Callable) -> None:
    r = RECIPE["pretrain"]
    opt = _optimizer(model, r["lr"])
    model.train()
    for _ in range(r["steps"]):
        starts = torch.randint(0, len(stream) - r["tokens"] - 1, (r["batch"],), generator=gen)
        x = torch.stack([stream[s : s + r["tokens"]] for s in starts.tolist()])
        _step(model, opt, model(input_ids=x, labels=x).loss)
        advance()
    model.eval()


def _finetune(model, data: _Choices, pad: int, gen: torch.Generator, advance: Callable) -> None:
    r, limit = RECIPE["experts"], RECIPE["gpt2"]["n_positions"]
    opt = _optimizer(model, r["lr"])
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(r["steps"]):
        if len(order) < r["batch"]:
            order = torch.cat([order, torch.randperm(len(data.labels), generator=gen)])
        idx, order = order[: r["batch"]], order[r["batch"] :]
        ids, mask, answer = _batch([data.pair(i, data.labels[i], limit) for i in idx.tolist()], pad)
        _step(model, opt, -_answer_logprob(model, ids, mask, answer).mean())
        advance()
    model.eval()


def build(folder: Path, *, progress: bool = True, threads: int = 1) -> dict[str, Any]:
    """Train and save the lm zoo into ``folder``; returns the manifest fields."""
    with build_env(threads):
        return _build(folder, progress=progress)


def _build(folder: Path, *, progress: bool) -> dict[str, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    seed = RECIPE["seed"]
    data = {t: corpora.load_task(t, RECIPE["data"]) for t in (*TASKS, "language")}
    full = corpora.load_task("topic", {**RECIPE["data"], "body_chars": 10**9})
    raw = [e.text for e in full.splits["train"]]
    raw += [e.text for t in ("sentiment", "language") for e in data[t].splits["train"]]
    tokenizer = _train_tokenizer(raw)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    sizes = _write_tasks(folder, {t: data[t] for t in TASKS})
    stream = torch.tensor([i for ids in tokenizer(raw)["input_ids"] for i in (*ids, eos)])

    config = GPT2Config(
        vocab_size=len(tokenizer),
        **RECIPE["gpt2"],
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
    )
    limit = config.n_positions
    train = {t: _Choices(tokenizer, t, data[t], "train") for t in TASKS}
    test = {t: _Choices(tokenizer, t, data[t], "test") for t in TASKS}
    total = RECIPE["pretrain"]["steps"] + len(TASKS) * RECIPE["experts"]["steps"]
    timings: dict[str, float] = {}
    models: dict[str, Any] = {}
    with progress_bar("lm", total, "base (pre-train)", enabled=progress) as (advance, describe):
        start = time.perf_counter()
        torch.manual_seed(seed)
        base = GPT2LMHeadModel(config)
        _pretrain(base, stream, torch.Generator().manual_seed(seed), advance)
        _save(base, tokenizer, folder / "base")
        base_state = {n: t.detach().clone() for n, t in base.state_dict().items()}
        timings["base_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        for i, task in enumerate(TASKS):
            describe(f"expert {task}")
            model = GPT2LMHeadModel(config)
            model.load_state_dict(base_state)
            _finetune(model, train[task], eos, torch.Generator().manual_seed(seed + 1 + i), advance)
            _save(model, tokenizer, folder / "experts" / task)
            models[task] = model
        timings["experts_seconds"] = round(time.perf_counter() - start, 1)

    accuracy = _measure(base, models, base_state, test, eos, limit)
    return {
        "tasks": list(TASKS),
        "label_names": {t: list(data[t].label_names) for t in TASKS},
        "answer_tokens": {t: [len(c) for c in test[t].choices] for t in TASKS},
        "pool": {"base": "base", "experts": {t: f"experts/{t}" for t in TASKS}},
        "lm_eval": {"include_path": "tasks", "tasks": LM_EVAL_TASKS},
        "data": {t: f"data/{t}" for t in TASKS},
        "sizes": sizes,
        "vocab_size": len(tokenizer),
        "pretrain_tokens": len(stream),
        "params": sum(p.numel() for p in base.parameters()),
        "accuracy": accuracy,
        **timings,
        "versions": versions(),
    }


def _save(model, tokenizer, out: Path) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _measure(base, experts: dict, base_state: dict, test: dict, pad: int, limit: int) -> dict:
    """Test multiple-choice accuracy of the experts (each on its task), the base, and task
    arithmetic θ₀ + λ Σₖ τₖ over every tensor."""

    def evaluate(model_of: Callable[[str], Any]) -> dict[str, dict[str, float]]:
        return scores({"test": {t: _accuracy(model_of(t), test[t], pad, limit) for t in TASKS}})

    out: dict[str, Any] = {
        "experts": evaluate(lambda t: experts[t]),
        "base": evaluate(lambda t: base),
    }
    states = {t: m.state_dict() for t, m in experts.items()}
    merged: dict[str, Any] = {}
    for lam in LAMBDAS:
        base.load_state_dict(
            {n: b + lam * sum(states[t][n] - b for t in TASKS) for n, b in base_state.items()}
        )
        merged[f"{lam:.4g}"] = evaluate(lambda t: base)
    base.load_state_dict(base_state)
    out["task_arithmetic"] = merged
    return out
