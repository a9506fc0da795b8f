"""lm-eval tasks as an objective: one in-memory ``HFLM`` per live model, reused every trial.

The lm-eval tasks are loaded once per worker from a ``TaskManager`` (``include_path`` without
the ~15k built-in tasks unless ``include_defaults: true``); each trial calls
``lm_eval.evaluator.evaluate`` on that task dict with ``bootstrap_iters=0``. The ``HFLM`` wraps
the pool's live model object, so the merge written in place before a trial is what it scores.

Every setting that changes scores is part of the objective's config, hence of the stored study
(a study whose config changed cannot be resumed): ``num_fewshot``, ``dtype`` and the example
selection (``limit`` or ``samples``) must be written out; ``apply_chat_template``,
``system_instruction``, ``fewshot_as_multiturn`` and ``max_gen_toks`` have fixed defaults.
:meth:`LmEvalObjective.settings` lists them all.

Example config::

    objectives:
      tasks:
        topic:
          kind: lmeval
          tasks: ms_topic
          include_path: ${zoo:lm}/tasks
          metric: acc
          num_fewshot: 0
          samples: 200
          dtype: float32
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mergesweep.errors import ConfigError, MissingFileError, ObjectiveError
from mergesweep.objectives.base import DIRECTIONS, Objective
from mergesweep.objectives.data import subset_indices
from mergesweep.pool import ModelPool

__all__ = ["LmEvalObjective"]

_UNSET: Any = object()
_DTYPES = ("float32", "bfloat16", "float16")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# One HFLM per live model object (and its settings), shared by every objective of a worker,
# and one tokenizer per folder.
_LMS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()
_TOKENIZERS: dict[str, Any] = {}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence lm-eval's INFO logs and per-call tqdm bars, and datasets' bars, for one call.

    lm-eval prints several bars and log lines per ``evaluate``; a sweep shows its own progress.
    The task-building bar has no switch, so its module's ``tqdm`` is swapped for the call.
    """
    import lm_eval.api.task as task_mod
    from datasets.utils import logging as ds_logging

    logger = logging.getLogger("lm_eval")
    level, bars, tqdm = logger.level, ds_logging.is_progress_bar_enabled(), task_mod.tqdm
    logger.setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    task_mod.tqdm = lambda it=None, *a, **k: it
    try:
        yield
    finally:
        task_mod.tqdm = tqdm
        logger.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def _quiet_hflm():
    """``HFLM`` whose request loops never draw a bar (its own argument, always on)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        # (context, continuation) -> token ids: the tasks' requests are the same every trial
        # and this HFLM's tokenizer never changes, so each pair is encoded once per worker.
        _pairs: dict[tuple[str, str], tuple[list[int], list[int]]]

        def _encode_pair(self, context: str, continuation: str):
            pairs = self.__dict__.setdefault("_pairs", {})
            key = (context, continuation)
            if key not in pairs:
                pairs[key] = super()._encode_pair(context, continuation)
            return pairs[key]

        # Seconds inside the model's forward passes, for the trial's ``forward_s``.
        forward_s: float = 0.0

        def _model_call(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super()._model_call(*args, **kwargs)
            finally:
                self.forward_s += time.perf_counter() - t0

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            # loglikelihood_rolling calls this with disable_tqdm=False hard-coded.
            if self.backend == "causal" and isinstance(self.batch_size, int):
                return _causal_loglikelihoods(self, requests)
            return super()._loglikelihood_tokens(
                requests, disable_tqdm=True, override_bs=override_bs
            )

    return QuietHFLM


def _causal_loglikelihoods(lm: Any, requests: list) -> list[tuple[float, bool]]:
    """``HFLM._loglikelihood_tokens`` for a causal model at a fixed batch size, same numbers.

    The same request order, batches and one-token-continuation grouping (lm-eval's
    ``Collator``), so the same forward passes; but the log-softmax runs over the continuation
    rows only instead of the whole ``[batch, length, vocabulary]`` logits (a row's
    log-softmax does not depend on the other rows), and those rows are picked out with one
    index per batch instead of per request: lm-eval's own scoring costs ~20% on top of the
    forward passes of a small model, this ~2%.
    """
    import torch.nn.functional as F

    # Collator as huggingface.py itself imports it (its module moved between releases).
    from lm_eval.models.huggingface import Collator

    def order(req: tuple) -> tuple:
        toks = req[1] + req[2]
        return -len(toks), tuple(toks)

    batches = Collator(
        requests,
        sort_fn=order,
        group_by="contexts" if lm.logits_cache else None,
        group_fn=lambda req: req[-2] + req[-1][:-1],
    )
    window = lm.max_length + 1
    res: list[tuple[float, bool]] = []
    for chunk in batches.get_batched(n=lm.batch_size, batch_fn=None):
        inps, rows_b, rows_t, spans = [], [], [], []
        for i, (_, context, continuation) in enumerate(chunk):
            if not context or not continuation or len(continuation) > lm.max_length:
                raise ValueError("lm-eval request with an empty or over-long continuation")
            inp = (context + continuation)[-window:][:-1]  # truncated from the left
            inps.append(inp)
            n, start = len(continuation), len(inp) - len(continuation)
            spans.append((len(rows_t), n))
            rows_b.extend([i] * n)
            rows_t.extend(range(start, start + n))
        width = max(len(x) for x in inps)  # zeros on the right, as lm-eval's pad_and_concat
        padded = torch.tensor([x + [0] * (width - len(x)) for x in inps], device=lm.device)
        logits = lm._model_call(padded)
        index = (
            torch.tensor(rows_b, device=logits.device),
            torch.tensor(rows_t, device=logits.device),
        )
        scored = F.log_softmax(logits[index], dim=-1, dtype=lm.softmax_dtype)
        greedy = scored.argmax(dim=-1)
        for (request, context, continuation), (at, n) in zip(chunk, spans, strict=True):
            rows, best = scored[at : at + n].unsqueeze(0), greedy[at : at + n].unsqueeze(0)
            for key, cont, cont_rows in batches.get_cache(
                req_str=request, cxt_toks=context, cont_toks=continuation, logits=rows
            ):
                cont_t = torch.tensor(cont, dtype=torch.long, device=cont_rows.device).unsqueeze(0)
                exact = bool((best[:, -cont_t.shape[1] :] == cont_t).all())
                picked = torch.gather(cont_rows, 2, cont_t.unsqueeze(-1)).squeeze(-1)
                answer = (float(picked.sum()), exact)
                res.append(answer)
                if key is not None:  # rolling requests cache per document, not here
                    lm.cache_hook.add_partial("loglikelihood", key, answer)
    return batches.get_original(res)


def _reuse_requests(task: Any) -> None:
    """Make ``task.build_all_requests`` build once per argument set and then reuse the requests.

    ``evaluate`` rebuilds every request (prompts rendered through jinja, few-shot contexts)
    on each call although the documents, the subset and the few-shot seed are the same every
    trial; the stored ``Instance`` objects are handed back with their responses cleared, so
    lm-eval fills and scores them exactly as freshly built ones.
    """
    build = task.build_all_requests
    built: dict[str, list[Any]] = {}

    def build_all_requests(**kwargs: Any) -> None:
        key = repr(sorted(kwargs.items()))
        if key not in built:
            build(**kwargs)
            built[key] = list(task._instances)
            return
        for instance in built[key]:
            instance.resps = []
            instance.filtered_resps = {}
        task._instances = list(built[key])

    task.build_all_requests = build_all_requests


class LmEvalObjective(Objective):
    """An lm-eval metric (``acc``, ``acc_norm``, ``exact_match``...) of the live merged model.

    Options (``objectives.tasks.<task>.<option>``):
        tasks: an lm-eval task, group or tag name, or a list of them; the value is the mean of
            ``metric`` over them (a tag counts as its tasks, a group as its aggregate).
        num_fewshot: few-shot examples per prompt (required; 0 for zero-shot). The examples are
            drawn with the study seed, the same in every trial.
        dtype: the precision of the forward pass (required): the live model's own dtype, or
            ``bfloat16``/``float16`` autocast over a float32 model.
        limit: evaluate the first ``limit`` examples of each task (a float in (0, 1): that
            fraction); ``null``: all.
        samples: evaluate a fixed subset of this many examples per task, drawn with the study
            seed; ``null``: all. Exactly one of ``limit`` and ``samples`` must be given.
        metric: the metric's name; ``acc`` means ``acc,none`` (name a filter after a comma).
        include_path: a folder (or list) of task YAMLs for ``TaskManager``.
        include_defaults: also index lm-eval's built-in tasks (~7 s; their datasets must be
            on the machine: the hub is never reached from a sweep).
        batch_size: requests per forward pass (default 32).
        max_length: the model's context in tokens (default: from its config).
        apply_chat_template, system_instruction, fewshot_as_multiturn: as in lm-eval.
        max_gen_toks: generation length of ``generate_until`` tasks (default 256).
        direction: ``maximize`` (default) or ``minimize`` (e.g. perplexities).
        head: the expert whose model is evaluated (default: the task itself).
    """

    kind = "lmeval"

    def __init__(
        self,
        task: str,
        *,
        tasks: str | list[str],
        num_fewshot: int,
        dtype: str,
        limit: int | float | None = _UNSET,
        samples: int | None = _UNSET,
        metric: str = "acc",
        include_path: str | list[str] | None = None,
        include_defaults: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        apply_chat_template: bool | str = False,
        system_instruction: str | None = None,
        fewshot_as_multiturn: bool = False,
        max_gen_toks: int = 256,
        direction: str = "maximize",
        head: str | None = None,
    ) -> None:
        super().__init__(task)
        names = [tasks] if isinstance(tasks, str) else tasks
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{self.key('tasks')}: expected a task name or a list of names")
        self.task_names = list(names)
        if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
            raise ConfigError(f"{self.key('num_fewshot')}: expected an integer >= 0")
        self.num_fewshot = num_fewshot
        if dtype not in _DTYPES:
            raise ConfigError(f"{self.key('dtype')}: expected one of {', '.join(_DTYPES)}")
        self.dtype = dtype
        self.limit, self.samples = self._selection(limit, samples)
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{self.key('metric')}: expected a metric name such as 'acc'")
        self.metric = metric
        self.metric_key = metric if "," in metric else f"{metric},none"
        paths = [] if include_path is None else include_path
        paths = [paths] if isinstance(paths, str) else paths
        self.include_path = [Path(p).expanduser() for p in paths]
        for p in self.include_path:
            if not p.is_dir():
                raise MissingFileError(f"{self.key('include_path')}: no such folder '{p}'")
        if not self.include_path and not include_defaults:
            raise ConfigError(
                f"{self.key('include_path')}: give a folder of task YAMLs, or set "
                "include_defaults: true for lm-eval's built-in tasks"
            )
        self.include_defaults = bool(include_defaults)
        for name, value in (("batch_size", batch_size), ("max_gen_toks", max_gen_toks)):
            if not _positive_int(value):
                raise ConfigError(f"{self.key(name)}: expected a positive integer, got {value!r}")
        if max_length is not None and not _positive_int(max_length):
            raise ConfigError(f"{self.key('max_length')}: expected a positive integer or null")
        self.batch_size, self.max_length, self.max_gen_toks = batch_size, max_length, max_gen_toks
        self.apply_chat_template = apply_chat_template
        self.system_instruction = system_instruction
        self.fewshot_as_multiturn = bool(fewshot_as_multiturn)
        if direction not in DIRECTIONS:
            raise ConfigError(f"{self.key('direction')}: expected maximize or minimize")
        self.direction = direction  # type: ignore[assignment]
        if head is not None:
            self.head = str(head)
        self.seed = 0
        self._loaded: dict[str, Any] | None = None
        self._members: dict[str, list[str]] = {}
        self._sample_idx: dict[str, list[int]] | None = None
        self._tokenizer: Any = None
        self._forward_s = 0.0

    def _selection(self, limit: Any, samples: Any) -> tuple[int | float | None, int | None]:
        if (limit is _UNSET) == (samples is _UNSET):
            raise ConfigError(
                f"{self.key('samples')}: give exactly one of 'samples' (a fixed seeded subset "
                "per task) or 'limit' (the first N), null meaning every example; the choice "
                "changes scores, so it is never implicit"
            )
        if samples is not _UNSET:
            if samples is not None and not _positive_int(samples):
                raise ConfigError(f"{self.key('samples')}: expected a positive integer or null")
            return None, samples
        if limit is not None and not (
            _positive_int(limit) or (isinstance(limit, float) and 0.0 < limit < 1.0)
        ):
            raise ConfigError(
                f"{self.key('limit')}: expected a positive integer, a fraction in (0, 1) or null"
            )
        return limit, None

    def settings(self) -> dict[str, Any]:
        """Every evaluation setting that changes scores, defaults included."""
        return {
            "tasks": self.task_names,
            "metric": self.metric_key,
            "num_fewshot": self.num_fewshot,
            "dtype": self.dtype,
            "limit": self.limit,
            "samples": self.samples,
            "fewshot_seed": self.seed,
            "apply_chat_template": self.apply_chat_template,
            "system_instruction": self.system_instruction,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
            "max_gen_toks": self.max_gen_toks,
            "max_length": self.max_length,
        }

    # -- setup -----------------------------------------------------------------------------
    def setup(self, pool: ModelPool | None, seed: int) -> None:
        """Load the tasks (and their data) and the tokenizer once; draw the fixed subsets."""
        from lm_eval.tasks import TaskManager

        if pool is not None and self.head not in pool.spec.experts:
            raise ConfigError(
                f"{self.key('head')}: no expert '{self.head}' in the pool "
                f"({', '.join(pool.spec.experts)})"
            )
        self.seed = seed
        with _quiet():
            manager = TaskManager(
                include_path=[str(p) for p in self.include_path] or None,
                include_defaults=self.include_defaults,
            )
            known = set(manager.all_tasks)
            for name in self.task_names:
                if name not in known:
                    shown = ", ".join(sorted(known)[:12]) + (" ..." if len(known) > 12 else "")
                    raise ObjectiveError(
                        f"{self.key('tasks')}: unknown lm-eval task '{name}'; "
                        f"known: {shown or 'none (no task YAMLs found)'}"
                    )
            try:
                loaded = manager.load(list(self.task_names))
                self._members = {n: list(manager.load([n])["tasks"]) for n in self.task_names}
            except Exception as exc:  # a broken YAML or missing data file
                raise ObjectiveError(
                    f"{self.key('tasks')}: cannot load {self.task_names}: {type(exc).__name__}: "
                    f"{exc}"
                ) from None
        for name, task in loaded["tasks"].items():
            self._configure(name, task)
            _reuse_requests(task)
        self._loaded = loaded
        if self.samples is not None:
            self._sample_idx = {
                name: subset_indices(len(task.eval_docs), self.samples, seed).tolist()
                for name, task in loaded["tasks"].items()
            }
        if pool is not None:
            self._tokenizer = self._load_tokenizer([pool.spec.experts[self.head], pool.spec.base])

    def _configure(self, name: str, task: Any) -> None:
        """Apply num_fewshot and generation length the way ``simple_evaluate`` does."""
        if self.num_fewshot and task.get_config("num_fewshot") == 0:
            raise ObjectiveError(
                f"{self.key('num_fewshot')}: lm-eval task '{name}' fixes num_fewshot to 0 in "
                "its config; use num_fewshot: 0"
            )
        task.set_config(key="num_fewshot", value=self.num_fewshot)
        if task.get_config("output_type") == "generate_until":
            task.set_config(
                key="generation_kwargs", value={"max_gen_toks": self.max_gen_toks}, update=True
            )

    def _load_tokenizer(self, folders: list[str]) -> Any:
        from transformers import AutoTokenizer

        for folder in folders:
            # transformers 5 builds an empty tokenizer from a folder without tokenizer files.
            if any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES):
                folder = str(Path(folder).resolve())
                try:
                    if folder not in _TOKENIZERS:
                        _TOKENIZERS[folder] = AutoTokenizer.from_pretrained(folder)
                    return _TOKENIZERS[folder]
                except Exception as exc:
                    raise ObjectiveError(
                        f"{self.key('head')}: cannot load the tokenizer in '{folder}': {exc}"
                    ) from None
        raise ObjectiveError(
            f"{self.key('head')}: lm-eval needs a tokenizer, but none is in "
            f"{' or '.join(repr(str(f)) for f in folders)}"
        )

    # -- evaluation ------------------------------------------------------------------------
    def lm(self, model: nn.Module) -> Any:
        """The worker's ``HFLM`` over ``model`` for these settings (built on first use)."""
        if self._tokenizer is None:
            path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
            self._tokenizer = self._load_tokenizer([path] if path else [])
        param = next(model.parameters())
        own = str(param.dtype).removeprefix("torch.")
        if self.dtype != own and not (own == "float32" and self.dtype in ("bfloat16", "float16")):
            raise ObjectiveError(
                f"{self.key('dtype')}: the model is {own}; evaluate it in {own}, or in "
                "bfloat16/float16 only over a float32 model"
            )
        key = (id(self._tokenizer), self.batch_size, self.max_length, self.dtype)
        per_model = _LMS.setdefault(model, {})
        if key not in per_model:
            with _quiet():
                per_model[key] = _quiet_hflm()(
                    pretrained=model,
                    tokenizer=self._tokenizer,
                    batch_size=self.batch_size,
                    max_length=self.max_length,
                    mixed_precision_dtype=None if self.dtype == own else self.dtype,
                )
        return per_model[key]

    def results(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """lm-eval's ``results`` dict (per task and group) for the model as it is now."""
        from lm_eval import evaluator

        if self._loaded is None:
            raise RuntimeError(f"objective '{self.task}': call setup(pool, seed) first")
        lm = self.lm(model)
        for task in self._loaded["tasks"].values():
            task.set_fewshot_seed(seed=self.seed)  # the same few-shot examples every trial
        before = lm.forward_s
        with _quiet():
            out = evaluator.evaluate(
                lm,
                self._loaded,
                limit=self.limit,
                samples=self._sample_idx,
                bootstrap_iters=0,
                log_samples=False,
                system_instruction=self.system_instruction,
                apply_chat_template=self.apply_chat_template,
                fewshot_as_multiturn=self.fewshot_as_multiturn,
            )
        self._forward_s += lm.forward_s - before
        return out["results"]

    def take_timings(self) -> dict[str, float]:
        """``forward_s``: seconds in the model's forward passes since the last call."""
        spent, self._forward_s = self._forward_s, 0.0
        return {"forward_s": spent}

    def evaluate(self, model: nn.Module) -> float:
        """The mean of ``metric`` over the configured tasks (tags as their tasks)."""
        results = self.results(model)
        values = []
        for name in self.task_names:
            parts = [name] if self.metric_key in results.get(name, {}) else self._members[name]
            for part in parts:
                entry = results.get(part, {})
                if self.metric_key not in entry:
                    have = sorted(k for k in entry if "," in k and "_stderr," not in k)
                    raise ObjectiveError(
                        f"{self.key('metric')}: lm-eval task '{part}' reports no "
                        f"'{self.metric_key}'; it reports: {', '.join(have) or 'nothing'}"
                    )
                values.append(float(entry[self.metric_key]))
        return float(np.mean(values))
