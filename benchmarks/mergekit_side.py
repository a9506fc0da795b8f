"""The mergekit side of benchmarks/mergekit_paths.py: runs in mergekit's own virtual environment.

mergekit is never a mergesweep dependency, so this file imports only mergekit, lm-eval and
torch (no mergesweep). Two modes, both printing one JSON object per trial on stdout:

``eval MODEL_DIR``
    path (A)'s evaluation process: a fresh process that runs ``lm_eval.simple_evaluate`` on a
    merged folder written by ``mergekit-yaml``, as ``lm_eval --model hf`` would.
``actor``
    path (C): one long-lived process doing what mergekit-evolve's ``OnDiskMergeEvaluator``
    does per genotype (``mergekit/evo/actors.py`` and ``evo/helpers.py``): ``run_merge`` into a
    fresh temporary folder with evolve's ``MergeOptions``, then ``simple_evaluate`` with
    ``model="huggingface"`` and ``pretrained=<folder>`` through a warm ``TaskManager``, then
    remove the folder. It reads one job per stdin line: ``{"config": <mergekit YAML path>}``.

Timings per trial: ``merge_s`` (run_merge; C only), ``load_s`` (``HFLM.__init__``: the model
read from disk), ``eval_s`` (the rest of ``simple_evaluate``: task building, requests,
forward passes, scoring), ``forward_s`` (inside ``HFLM._model_call``), ``other_s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any


class _Clock:
    """Class-level wrappers on ``HFLM.__init__`` and ``HFLM._model_call`` that add up time."""

    def __init__(self) -> None:
        from lm_eval.models.huggingface import HFLM

        self.load = self.forward = 0.0
        init, call = HFLM.__init__, HFLM._model_call

        def timed_init(lm: Any, *a: Any, **k: Any) -> None:
            t0 = time.perf_counter()
            try:
                init(lm, *a, **k)
            finally:
                self.load += time.perf_counter() - t0

        def timed_call(lm: Any, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return call(lm, *a, **k)
            finally:
                self.forward += time.perf_counter() - t0

        HFLM.__init__, HFLM._model_call = timed_init, timed_call

    def reset(self) -> None:
        self.load = self.forward = 0.0


def _evaluate(folder: str, args: argparse.Namespace, manager: Any, clock: _Clock) -> dict:
    """``simple_evaluate`` as mergekit-evolve's ``evaluate_model`` calls it (float32 here)."""
    import lm_eval

    clock.reset()
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="huggingface",
        model_args={
            "pretrained": folder,
            "dtype": args.dtype,
            "use_cache": True,
            "device": "cpu",
        },
        tasks=args.tasks,
        num_fewshot=0,
        limit=args.limit,
        batch_size=args.batch_size,
        log_samples=False,
        verbosity="WARNING",
        task_manager=manager,
    )
    spent = time.perf_counter() - t0
    acc = {t: float(out["results"][t]["acc,none"]) for t in args.tasks}
    return {
        "load_s": clock.load,
        "eval_s": spent - clock.load,
        "forward_s": clock.forward,
        "acc": acc,
    }


def _manager(args: argparse.Namespace) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=args.include_path)


def _eval_main(args: argparse.Namespace) -> None:
    clock = _Clock()
    t0 = time.perf_counter()
    manager = _manager(args)
    setup = time.perf_counter() - t0
    result = _evaluate(args.model, args, manager, clock)
    result["task_manager_s"] = setup
    print(json.dumps(result), flush=True)


def _actor_main(args: argparse.Namespace) -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    storage = tempfile.mkdtemp(prefix="mk-evolve-")
    # mergekit-evolve's MergeOptions on CPU (scripts/evolve.py), and its actor's warm
    # LoaderCache and TaskManager (evo/actors.py, evo/strategy.py).
    options = MergeOptions(
        transformers_cache=os.path.join(storage, "transformers_cache"),
        lora_merge_cache=os.path.join(storage, "lora_merge_cache"),
        cuda=False,
        low_cpu_memory=False,
        out_shard_size=1_000_000_000_000,
        quiet=True,
        read_to_gpu=False,
        copy_tokenizer=True,
        safe_serialization=True,
    )
    LoaderCache().setup(options)
    manager = _manager(args)
    clock = _Clock()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        start = time.perf_counter()
        gc.collect()  # OnDiskMergeEvaluator.evaluate_genotype starts with these
        with open(job["config"]) as fh:
            config = MergeConfiguration.model_validate(yaml.safe_load(fh))
        os.makedirs(os.path.join(storage, "merged"), exist_ok=True)
        folder = tempfile.mkdtemp(prefix="merged", dir=os.path.join(storage, "merged"))
        t0 = time.perf_counter()
        run_merge(config, out_path=folder, options=options)
        merge_s = time.perf_counter() - t0
        try:
            result = _evaluate(folder, args, manager, clock)
        finally:
            shutil.rmtree(folder)
        total = time.perf_counter() - start
        result["merge_s"] = merge_s
        result["total_s"] = total
        result["other_s"] = total - merge_s - result["load_s"] - result["eval_s"]
        print(json.dumps(result), flush=True)
    shutil.rmtree(storage, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("eval", "actor"))
    parser.add_argument("model", nargs="?", help="eval: the merged folder")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--include-path", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.mode == "eval":
        _eval_main(args)
    else:
        _actor_main(args)


if __name__ == "__main__":
    main()
