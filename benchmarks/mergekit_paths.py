"""Per-trial cost against mergekit's paths: the same merge and lm-eval evaluation, three ways.

Issue "Benchmarks that prove it", item 2. On each pool, a mergesweep sweep runs first and its
trials' coefficients are replayed through mergekit, so every path scores the same weights:

(M) mergesweep: ``mergesweep.run`` of a model-wise task-arithmetic sweep (random search) with
    one Ray worker of one torch thread; lm-eval objectives over the first ``--limit`` examples
    of ``ms_topic`` and ``ms_sentiment``. The worker keeps the pool and the tasks resident and
    merges in place. Per-trial time is the gap between consecutive completions (driver, Ray
    round trip, merge and evaluation; one trial in flight), so it hides nothing.
(A) fresh processes: ``mergekit-yaml`` of the trial's exported mergekit YAML into a folder,
    then a new Python process running ``lm_eval.simple_evaluate`` on it (as ``lm_eval --model
    hf`` does), then the folder is removed.
(C) mergekit-evolve's on-disk actor: one long-lived process that per trial runs ``run_merge``
    into a temporary folder and ``simple_evaluate`` through a warm ``TaskManager``
    (``benchmarks/mergekit_side.py actor``).

Pools: ``lm`` (the lm zoo, GPT-2 ~1M parameters) and ``large`` (a GPT-2 of ~118M parameters,
12 layers of width 896, with the lm zoo's tokenizer; random weights and experts at random task
vectors, built here once: only its size matters for cost, and the accuracy check holds for any
weights). mergekit lives in its own virtual environment, never in mergesweep's::

    python3 -m venv ~/mkvenv && ~/mkvenv/bin/pip install torch==2.13.0 \\
        && ~/mkvenv/bin/pip install mergekit==0.1.5 lm_eval==<mergesweep's version>

    python benchmarks/mergekit_paths.py --mergekit-venv ~/mkvenv [--pools lm large]
        [--trials 9] [--trials-a 4] [--limit 100] [--large-limit 8]
        [--large-trials 5] [--large-trials-a 2]

Every process uses one torch thread. The first trial of (M) and (C) warms their caches and is
left out of the medians (the cold cost is reported as ``load_s``); every (A) trial is cold by
design. Parts per trial: ``merge`` (the merge: in place for M, run_merge or mergekit-yaml to
disk for C and A), ``load`` (reading the merged model: HFLM's init), ``forward`` (inside
``HFLM._model_call``), ``eval_rest`` (the rest of lm-eval: requests, scoring, metrics),
``other`` (the remainder: process start-up and imports, driver and storage). Writes
benchmarks/results/mergekit_paths.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
SIDE = HERE / "mergekit_side.py"
TASKS = ("topic", "sentiment")
LARGE = {"n_layer": 12, "n_embd": 896, "n_head": 14, "seed": 0, "tau_std": 0.002}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


def large_pool(zoo: Path, root: Path) -> Path:
    """A ~118M-parameter GPT-2 base and two experts (base + Gaussian task vectors), saved as
    Hugging Face folders with the lm zoo's tokenizer; built once per recipe."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tag = "gpt2-large-pool-" + "-".join(f"{k}{v}" for k, v in LARGE.items())
    out = root / tag
    if (out / "done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    small = GPT2Config.from_pretrained(zoo / "base")
    config = GPT2Config(
        vocab_size=small.vocab_size,
        n_positions=small.n_positions,
        n_layer=LARGE["n_layer"],
        n_embd=LARGE["n_embd"],
        n_head=LARGE["n_head"],
        bos_token_id=small.bos_token_id,
        eos_token_id=small.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(LARGE["seed"])
    model = GPT2LMHeadModel(config).eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = ["base", "topic", "sentiment"]
    for i, name in enumerate(names):
        if i:
            gen = torch.Generator().manual_seed(LARGE["seed"] + i)
            with torch.no_grad():
                for key, param in model.named_parameters():
                    noise = torch.randn(param.shape, generator=gen) * LARGE["tau_std"]
                    param.copy_(base[key] + noise)
        folder = out / name
        model.save_pretrained(folder)
        for f in (zoo / "base").iterdir():
            if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
                shutil.copy(f, folder / f.name)
    (out / "done").write_text(json.dumps({"params": model.num_parameters(), **LARGE}))
    return out


def _experiment(folders: dict[str, Path], tasks: Path, limit: int, trials: int, db: str) -> dict:
    objective = {
        "kind": "lmeval",
        "include_path": str(tasks),
        "metric": "acc",
        "num_fewshot": 0,
        "limit": limit,
        "dtype": "float32",
        "batch_size": 32,
    }
    return {
        "name": "mergekit_paths",
        "seed": 0,
        "storage": db,
        "pool": {
            "base": str(folders["base"]),
            "experts": {t: str(folders[t]) for t in TASKS},
        },
        "method": {"name": "task_arithmetic"},
        "space": {"kind": "modelwise", "options": {"low": 0.0, "high": 1.5}},
        "objectives": {
            "mode": "mean",
            "tasks": {t: {**objective, "tasks": f"ms_{t}"} for t in TASKS},
        },
        "searcher": {"name": "random"},
        "budget": {"trials": trials},
        "executor": {"kind": "ray", "workers": 1, "threads": 1},
    }


def run_mergesweep(config: dict, tmp: Path) -> tuple[list[dict], float]:
    """Path (M): the sweep; per trial its params, metrics, timings and completion gap."""
    import mergesweep
    from mergesweep.storage import open_storage

    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    mergesweep.run(path, [])
    study = optuna.load_study(study_name=config["name"], storage=open_storage(config["storage"]))
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    rows, prev = [], None
    load_s = 0.0
    for t in done:
        timings = dict(t.user_attrs["timings"])
        load_s = max(load_s, timings.get("load_s", 0.0))
        end = t.datetime_complete.timestamp()
        rows.append(
            {
                "number": t.number,
                "params": dict(t.params),
                "metrics": dict(t.user_attrs["metrics"]),
                "timings": timings,
                "total_s": None if prev is None else end - prev,
            }
        )
        prev = end
    return rows, load_s


def mergekit_yamls(config: dict, rows: list[dict], out: Path) -> list[Path]:
    """Each trial's merge as mergekit YAML, through mergesweep's own exporter."""
    from mergesweep.export import _mergekit
    from mergesweep.runtime.worker import Evaluator
    from mergesweep.spaces import build_space

    evaluator = Evaluator(config)
    cfg = evaluator.cfg
    space = build_space(cfg.space.kind, evaluator.pool.layout, cfg.space.options)
    paths = []
    for row in rows:
        mk = _mergekit(evaluator, cfg, space.to_plan(row["params"]), f"trial {row['number']}")
        if mk.yaml is None:
            raise SystemExit(f"mergekit cannot express trial {row['number']}: {mk.note}")
        path = out / f"trial{row['number']}.yaml"
        path.write_text(mk.yaml)
        paths.append(path)
    return paths


def _side_args(tasks: Path, limit: int) -> list[str]:
    return [
        "--tasks",
        *[f"ms_{t}" for t in TASKS],
        "--include-path",
        str(tasks),
        "--limit",
        str(limit),
        "--batch-size",
        "32",
    ]


def run_fresh(venv: Path, configs: list[Path], tasks: Path, limit: int, tmp: Path) -> list[dict]:
    """Path (A): mergekit-yaml, then a fresh lm-eval process, per trial."""
    rows = []
    for config in configs:
        folder = tmp / "merged-a"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            [str(venv / "bin" / "mergekit-yaml"), str(config), str(folder), "--quiet"],
            check=True,
            env=_env(),
            stdout=subprocess.DEVNULL,
        )
        t1 = time.perf_counter()
        done = subprocess.run(
            [
                str(venv / "bin" / "python"),
                str(SIDE),
                "eval",
                str(folder),
                *_side_args(tasks, limit),
            ],
            check=True,
            env=_env(),
            capture_output=True,
            text=True,
        )
        t2 = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        out.update(merge_s=t1 - t0, total_s=t2 - t0)
        out["other_s"] = (t2 - t1) - out["load_s"] - out["eval_s"]
        rows.append(out)
    return rows


def run_actor(venv: Path, configs: list[Path], tasks: Path, limit: int, log: Path) -> list[dict]:
    """Path (C): one long-lived mergekit-evolve-style actor process (its stderr: ``log``)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(venv / "bin" / "python"), str(SIDE), "actor", *_side_args(tasks, limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_env(),
            text=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        rows = []
        for config in [None, *configs]:
            if config is not None:
                proc.stdin.write(json.dumps({"config": str(config)}) + "\n")
                proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                raise SystemExit(f"the mergekit actor died:\n{tail}")
            if config is not None:
                rows.append(json.loads(line))
        return rows
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _parts_m(rows: list[dict]) -> dict[str, float]:
    """M's rows in the mergekit paths' shape (the pool loads once, not per trial)."""
    flat = [
        {
            **r["timings"],
            "load_s": 0.0,
            "total_s": r["total_s"],
            "other_s": r["total_s"] - r["timings"]["merge_s"] - r["timings"]["eval_s"],
        }
        for r in rows
    ]
    return _parts_mk(flat)


def _parts_mk(rows: list[dict]) -> dict[str, float]:
    return {
        "total": _median([r["total_s"] for r in rows]),
        "merge": _median([r["merge_s"] for r in rows]),
        "load": _median([r["load_s"] for r in rows]),
        "forward": _median([r["forward_s"] for r in rows]),
        "eval_rest": _median([r["eval_s"] - r["forward_s"] for r in rows]),
        "other": _median([r["other_s"] for r in rows]),
    }


def _agreement(m_rows: list[dict], other: list[dict]) -> float:
    """The largest |accuracy difference| between M and a mergekit path, trial by trial."""
    worst = 0.0
    for m, o in zip(m_rows, other, strict=False):
        for task in TASKS:
            worst = max(worst, abs(m["metrics"][task] - o["acc"][f"ms_{task}"]))
    return worst


def bench_pool(name: str, args: argparse.Namespace, zoo: Path, tmp: Path) -> dict[str, Any]:
    if name == "lm":
        folders = {"base": zoo / "base", **{t: zoo / "experts" / t for t in TASKS}}
        limit, trials, trials_a = args.limit, args.trials, args.trials_a
    else:
        root = large_pool(zoo, Path(args.cache).expanduser())
        folders = {n: root / n for n in ("base", *TASKS)}
        limit, trials, trials_a = args.large_limit, args.large_trials, args.large_trials_a
    work = tmp / name
    work.mkdir()
    config = _experiment(folders, zoo / "tasks", limit, trials, f"sqlite:///{work}/m.db")
    print(f"[{name}] (M) mergesweep sweep, {trials} trials", flush=True)
    m_rows, m_load = run_mergesweep(config, work)
    configs = mergekit_yamls(config, m_rows, work)
    print(f"[{name}] (C) mergekit-evolve actor, {len(configs)} trials", flush=True)
    c_rows = run_actor(Path(args.mergekit_venv), configs, zoo / "tasks", limit, work / "c.log")
    print(f"[{name}] (A) fresh processes, {trials_a} trials", flush=True)
    a_rows = run_fresh(
        Path(args.mergekit_venv), configs[1 : 1 + trials_a], zoo / "tasks", limit, work
    )
    m_parts, c_parts, a_parts = _parts_m(m_rows[1:]), _parts_mk(c_rows[1:]), _parts_mk(a_rows)
    return {
        "pool": name,
        "folders": {k: str(v) for k, v in folders.items()},
        "params": _param_count(folders["base"]),
        "limit_per_task": limit,
        "trials": {"M": len(m_rows) - 1, "C": len(c_rows) - 1, "A": len(a_rows)},
        "M": {
            **m_parts,
            "load_s_once": m_load,
            "total_over_forward": m_parts["total"] / m_parts["forward"],
        },
        "C": {**c_parts, "first_trial_s": c_rows[0]["total_s"]},
        "A": a_parts,
        "max_acc_diff": {"A": _agreement(m_rows[1:], a_rows), "C": _agreement(m_rows, c_rows)},
        "per_trial": {"M": m_rows, "C": c_rows, "A": a_rows},
    } | ratios(m_parts, c_parts, a_parts)


def ratios(m: dict, c: dict, a: dict) -> dict[str, Any]:
    """Per-trial time ratios, and the same with every path's forward passes set to M's.

    A and C evaluate both tasks in one ``simple_evaluate``, so lm-eval batches the two tasks'
    requests together (sorted by length); M scores each task on its own. With few documents
    per task that changes the padding, hence the forward time, by more than the paths'
    overhead; ``*_same_forward`` compares the overheads alone. ``overhead_s``: a path's
    per-trial time beyond its forward passes.
    """
    out: dict[str, Any] = {
        "ratio_A_over_M": a["total"] / m["total"],
        "ratio_C_over_M": c["total"] / m["total"],
        "ratio_A_over_M_same_forward": (a["total"] - a["forward"] + m["forward"]) / m["total"],
        "ratio_C_over_M_same_forward": (c["total"] - c["forward"] + m["forward"]) / m["total"],
        "overhead_s": {k: p["total"] - p["forward"] for k, p in (("M", m), ("C", c), ("A", a))},
    }
    return out


def _param_count(folder: Path) -> int:
    """Distinct parameters stored in a folder's safetensors (a tied matrix counts once)."""
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                n = 1
                for d in fh.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _line(result: dict[str, Any]) -> str:
    m, c, a = result["M"], result["C"], result["A"]
    return (
        f"{result['pool']} ({result['params'] / 1e6:.1f}M params, {result['limit_per_task']} "
        f"docs/task): M {m['total']:.2f} s/trial (forward {m['forward']:.2f} s, "
        f"{m['total_over_forward']:.3f}x), C {c['total']:.2f} s, A {a['total']:.2f} s; "
        f"A/M {result['ratio_A_over_M']:.2f}x, C/M {result['ratio_C_over_M']:.2f}x (same "
        f"forward: {result['ratio_A_over_M_same_forward']:.2f}x, "
        f"{result['ratio_C_over_M_same_forward']:.2f}x); "
        f"max acc diff A {result['max_acc_diff']['A']:.4f}, C {result['max_acc_diff']['C']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit-venv", required=True, help="the venv holding mergekit")
    parser.add_argument("--pools", nargs="+", default=["lm", "large"], choices=("lm", "large"))
    parser.add_argument("--trials", type=int, default=9, help="M and C trials (first: warm-up)")
    parser.add_argument("--trials-a", type=int, default=4, help="A trials (each cold)")
    parser.add_argument("--limit", type=int, default=100, help="docs per task on the lm zoo")
    parser.add_argument("--large-limit", type=int, default=8, help="docs per task, large pool")
    parser.add_argument("--large-trials", type=int, default=5, help="M and C trials, large pool")
    parser.add_argument("--large-trials-a", type=int, default=2, help="A trials, large pool")
    parser.add_argument("--cache", default="~/.cache/mergesweep/bench")
    parser.add_argument("--out", default=str(HERE / "results" / "mergekit_paths.json"))
    args = parser.parse_args()
    if not (Path(args.mergekit_venv) / "bin" / "mergekit-yaml").is_file():
        sys.exit(f"--mergekit-venv: no mergekit-yaml in '{args.mergekit_venv}/bin'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    from mergesweep.zoo import ensure_zoo

    sys.path.insert(0, str(HERE))
    from study_scores import bench_lock, cpu_name

    zoo = ensure_zoo("lm", progress=True)
    versions = subprocess.run(
        [
            str(Path(args.mergekit_venv) / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('mergekit', 'lm_eval', 'torch', 'transformers')}))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results = []
    with bench_lock(), tempfile.TemporaryDirectory() as tmp:
        for name in args.pools:
            result = bench_pool(name, args, zoo, Path(tmp))
            print(_line(result), flush=True)
            results.append(result)
    import importlib.metadata as md

    out = {
        "benchmark": "mergekit_paths",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "torch_threads": 1,
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "versions": {
            "mergesweep_venv": {
                p: md.version(p) for p in ("lm_eval", "torch", "transformers", "ray", "optuna")
            },
            "mergekit_venv": json.loads(versions),
        },
        "command": "python benchmarks/mergekit_paths.py " + " ".join(sys.argv[1:]),
        "pools": results,
        "lines": [_line(r) for r in results],
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
