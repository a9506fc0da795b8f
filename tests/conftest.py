"""Session-wide fixtures: no hub access, a private zoo cache, the ``digits`` zoo built once.

The zoo cache of a test session is a fresh temporary folder, or ``$MERGESWEEP_TEST_ZOO_CACHE``
when set (point it at a cache that persists across runs to skip the ~1 minute build). Every
test sees ``MERGESWEEP_CACHE`` set to it, so no test writes into ``~/.cache/mergesweep``.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The PostgreSQL server of the machine (tests that need it skip, saying why, where it is absent).
PG_HOST, PG_PORT = "127.0.0.1", 5432


@pytest.fixture(scope="session", autouse=True)
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's zoo cache folder, exported as ``MERGESWEEP_CACHE``."""
    shared = os.environ.get("MERGESWEEP_TEST_ZOO_CACHE")
    root = Path(shared).expanduser() if shared else tmp_path_factory.mktemp("mergesweep-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGESWEEP_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def digits_zoo(zoo_cache: Path) -> Path:
    """The folder of the ``digits`` zoo, built once per session (or found in the cache)."""
    from mergesweep.zoo import ensure_zoo

    return ensure_zoo("digits", progress=False, threads=1)


@pytest.fixture(scope="session")
def text_zoo(zoo_cache: Path) -> Path:
    """The folder of the ``text`` zoo (MiniLM + 3 experts; ~7 min to build on 2 cores)."""
    from mergesweep.zoo import ensure_zoo

    return ensure_zoo("text", progress=False, threads=1)


@pytest.fixture(scope="session")
def lm_zoo(zoo_cache: Path) -> Path:
    """The folder of the ``lm`` zoo (GPT-2 + 2 experts + lm-eval tasks; ~4 min to build)."""
    from mergesweep.zoo import ensure_zoo

    return ensure_zoo("lm", progress=False, threads=1)


TINY_DOCS = {
    "tiny_yesno": (["no", "yes"], "Q: {{q}}\nA:"),
    "tiny_color": (["red", "green", "blue"], "Colour of {{q}}:"),
}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny causal-LM pool built in seconds: a byte-level BPE tokenizer, a random GPT-2
    ``base`` (tied embeddings), experts ``a`` and ``b`` (the base plus seeded noise on every
    tensor), and lm-eval tasks over jsonl files: ``tiny_yesno``/``tiny_color`` (multiple
    choice, tag ``tiny``) and ``tiny_ppl`` (rolling log-likelihood: ``word_perplexity``).

    Returns ``{"base", "a", "b", "tasks"}`` folders.
    """
    import json

    import torch
    import yaml
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-lm")
    words = ["the", "sky", "grass", "sea", "sun", "leaf", "rain", "cold", "warm", "is", "it"]
    rng = torch.Generator().manual_seed(0)
    docs = [
        " ".join(words[int(i)] for i in torch.randint(0, len(words), (6,), generator=rng))
        for _ in range(40)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*docs, *(f"Q: {d}\nA: yes" for d in docs)], trainer=trainer)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos
    )
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config).eval()
    out = {"base": root / "base"}
    base.save_pretrained(str(out["base"]))
    tokenizer.save_pretrained(str(out["base"]))
    for i, name in enumerate(("a", "b")):
        expert = GPT2LMHeadModel(config).eval()
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for (_, p), (_, q) in zip(expert.named_parameters(), base.named_parameters()):
                p.copy_(q + 0.5 * torch.randn(q.shape, generator=gen) * q.std().clamp(min=0.02))
        out[name] = root / name
        expert.save_pretrained(str(out[name]))
        tokenizer.save_pretrained(str(out[name]))
    out["tasks"] = root / "tasks"
    out["tasks"].mkdir()
    for task, (choices, prompt) in TINY_DOCS.items():
        files = {}
        for split, offset in (("validation", 0), ("train", 20)):
            path = root / "data" / f"{task}_{split}.jsonl"
            path.parent.mkdir(exist_ok=True)
            rows = [{"q": docs[offset + j], "label": j % len(choices)} for j in range(20)]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            files[split] = str(path)
        spec = {
            "task": task,
            "tag": ["tiny"],
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files},
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "fewshot_split": "train",
            "doc_to_text": prompt,
            "doc_to_target": "label",
            "doc_to_choice": choices,
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
            "metadata": {"version": 1.0},
        }
        (out["tasks"] / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # A continuous metric (perplexity of the raw docs) for checks that must see small changes.
    rolling = {
        "task": "tiny_ppl",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": files["validation"]}},
        "output_type": "loglikelihood_rolling",
        "validation_split": "validation",
        "doc_to_text": "",
        "doc_to_target": "{{q}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    }
    (out["tasks"] / "tiny_ppl.yaml").write_text(yaml.safe_dump(rolling, sort_keys=False))
    return out


def _pg_admin():
    """A connection to the ``postgres`` database as the first user the server accepts."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError:
        pytest.skip(f"PostgreSQL: nothing listens on {PG_HOST}:{PG_PORT}")
    errors = []
    for user in ("postgres", "root"):
        try:
            conn = psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=5
            )
        except psycopg2.OperationalError as exc:
            errors.append(f"{user}: {str(exc).strip()}")
            continue
        conn.autocommit = True
        return conn, user
    pytest.skip(f"PostgreSQL on {PG_HOST}:{PG_PORT} accepts neither user: {'; '.join(errors)}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database for this test (dropped afterwards); yields its SQLAlchemy URL."""
    conn, user = _pg_admin()
    name = f"mergesweep_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
