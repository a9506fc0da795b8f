"""The ``mergesweep`` command line.

Errors a user can cause print one line (``error: <key or file>: <problem>``) and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mergesweep.errors import MergesweepError
from mergesweep.storage import DEFAULT_STORAGE

__all__ = ["main"]

_storage_opt = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, help="Optuna storage URL."
)
_ray_opt = click.option(
    "--ray-address",
    default=None,
    metavar="HOST:PORT",
    help="Join the Ray cluster at this address (sets executor.ray_address, and "
    "executor.kind=ray unless overridden).",
)


def _ray_overrides(address: str | None, overrides: tuple[str, ...] | list[str]) -> list[str]:
    """``--ray-address`` as config overrides (the address quoted: YAML must keep a string)."""
    if not address:
        return []
    extra = [f"executor.ray_address={json.dumps(address)}"]
    kinds = [o.split("=", 1)[1].strip() for o in overrides if o.split("=")[0] == "executor.kind"]
    if not kinds:
        extra.append("executor.kind=ray")
    elif kinds[-1] == "inline":
        from mergesweep.errors import ConfigError

        raise ConfigError(
            "--ray-address: executor.kind=inline runs trials in this process, not on a Ray "
            "cluster; drop one of the two"
        )
    return extra


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


class _Group(click.Group):
    """Turns user errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MergesweepError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def _print_summary(summary) -> None:
    import optuna
    from rich.console import Console

    from mergesweep.report import render_best
    from mergesweep.storage import open_storage

    study = optuna.load_study(study_name=summary.study, storage=open_storage(summary.storage))
    Console().print(render_best(study, limit=5))
    pruned = f"{summary.pruned} pruned and " if summary.pruned else ""
    click.echo(
        f"study '{summary.study}' in {summary.storage}: {summary.complete} complete, "
        f"{pruned}{summary.failed} failed this run, {summary.wall_s:.1f} s"
    )


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Search merge coefficients: spaces × searchers × objectives, stored in Optuna."""
    ctx.obj = {"debug": debug}
    _quiet_libraries()


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--storage", default=None, help="Storage URL (overrides the config's storage).")
@_ray_opt
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run(
    config: str,
    overrides: tuple[str, ...],
    storage: str | None,
    ray_address: str | None,
    no_progress: bool,
) -> None:
    """Run the sweep CONFIG describes (continuing it if the study exists).

    OVERRIDES are key.sub=value pairs, e.g. budget.trials=50 searcher.name=gp.
    """
    from mergesweep.api import run as api_run

    extra = [
        *overrides,
        *([f"storage={storage}"] if storage else []),
        *_ray_overrides(ray_address, overrides),
    ]
    _print_summary(api_run(config, extra, progress=not no_progress))


@main.command()
@click.argument("study")
@_storage_opt
@click.argument("overrides", nargs=-1)
@_ray_opt
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def resume(
    study: str,
    storage: str,
    overrides: tuple[str, ...],
    ray_address: str | None,
    no_progress: bool,
) -> None:
    """Continue STUDY from the storage alone until its budget (budget.*/executor.* may change)."""
    from mergesweep.api import resume as api_resume

    extra = [*overrides, *_ray_overrides(ray_address, overrides)]
    _print_summary(api_resume(study, storage, extra, progress=not no_progress))


@main.command()
@click.argument("study")
@click.option("--to", "to", required=True, help="Name of the new study.")
@_storage_opt
@click.argument("overrides", nargs=-1)
@_ray_opt
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def fork(
    study: str,
    to: str,
    storage: str,
    overrides: tuple[str, ...],
    ray_address: str | None,
    no_progress: bool,
) -> None:
    """Start study --to from STUDY's complete trials (another searcher, budget...) and run it."""
    from mergesweep.api import fork as api_fork

    extra = [*overrides, *_ray_overrides(ray_address, overrides)]
    _print_summary(api_fork(study, to, storage, extra, progress=not no_progress))


@main.command()
@click.argument("study")
@_storage_opt
@click.option("--limit", default=10, show_default=True, help="Rows for single-objective studies.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option(
    "--prefer",
    default=None,
    metavar="TASK=W,...",
    help="Pick the point maximising the weighted sum of normalised task scores, from MAP's "
    "predicted front if stored, else the evaluated front (e.g. topic=2,langid=1).",
)
@click.option("--evaluate", is_flag=True, help="With --prefer: evaluate the pick as a new trial.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the study's figures to FILE.html (plotly) or FILE.png (matplotlib).",
)
def show(
    study: str,
    storage: str,
    limit: int,
    as_json: bool,
    prefer: str | None,
    evaluate: bool,
    plot: str | None,
) -> None:
    """The best trials of STUDY (or its Pareto front) with per-task metrics, its hypervolume
    and MAP's predicted front when stored."""
    import optuna
    from rich.console import Console

    from mergesweep.fronts import evaluate_pick, pick, render_fronts
    from mergesweep.report import best_trials, render_best
    from mergesweep.storage import open_storage, require_study

    st = open_storage(storage)
    require_study(st, study, storage)
    s = optuna.load_study(study_name=study, storage=st)
    if plot:
        _write_plot(s, plot)
    chosen = pick(s, prefer) if prefer else None
    if chosen is not None and evaluate:
        chosen["evaluated"] = evaluate_pick(study, storage, chosen["params"])
    if as_json:
        click.echo(json.dumps(chosen if prefer else best_trials(s, limit), indent=2))
        return
    console = Console()
    console.print(render_best(s, limit))
    for item in render_fronts(s, limit):
        console.print(item)
    if chosen is not None:
        console.print(f"pick for {prefer} ({chosen['source']} front): {chosen['params']}")
        console.print(f"  scores: {chosen['scores']}")
        if "evaluated" in chosen:
            ev = chosen["evaluated"]
            console.print(f"  evaluated as trial {ev['trial']}: {ev['metrics']}")


def _write_plot(study, path: str) -> None:
    from mergesweep.figures import study_figures, study_space
    from mergesweep.figures_file import write_figures

    space, layout, why = study_space(study)
    if why:
        click.echo(f"note: no coefficient heatmap ({why})", err=True)
    figures = study_figures(study, space=space, layout=layout)
    out = write_figures(figures, path, title=study.study_name)
    n = len(figures)
    click.echo(f"wrote {n} figure{'s' * (n != 1)} ({', '.join(figures)}) to {out}", err=True)


@main.command()
@_storage_opt
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port (0: any free port).")
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
def dashboard(storage: str, host: str, port: int, access_log: bool) -> None:
    """Serve optuna-dashboard for a storage (safe while sweeps write to it; Ctrl-C stops)."""
    from mergesweep.dashboard import serve

    serve(storage, host, port, access_log=access_log)


@main.command("list")
@_storage_opt
def list_cmd(storage: str) -> None:
    """The studies in a storage with trial counts and best values."""
    from rich.console import Console
    from rich.table import Table

    from mergesweep.report import list_studies

    table = Table(title=f"studies in {storage}")
    for col in ("name", "complete", "budget", "failed", "running", "directions", "best"):
        table.add_column(col)
    for row in list_studies(storage):
        table.add_row(
            *(str(row[c]) for c in ("name", "complete", "budget", "failed", "running")),
            ",".join(row["directions"]),
            str(row["best"]),
        )
    Console().print(table)


@main.command("export")
@click.argument("study")
@click.option("--trial", "trial", type=int, required=True, help="Trial number (see `show`).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder.")
@_storage_opt
@click.option("--check/--no-check", default=True, show_default=True, help="Reload and re-score.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
def export_cmd(study: str, trial: int, out: str, storage: str, check: bool, force: bool) -> None:
    """Write trial N of STUDY as Hugging Face model folder(s) in OUT, plus mergekit.yaml where
    mergekit can express the merge (else MERGEKIT.md says why)."""
    from mergesweep.export import export_trial

    r = export_trial(study, trial, out, storage=storage, check=check, overwrite=force)
    where = {str(p) for p in r.folders.values()}
    click.echo(
        f"wrote {'one model' if r.layout == 'single' else 'one model per task'}: "
        f"{', '.join(sorted(where))}"
    )
    for task, value in r.exported_metrics.items():
        click.echo(
            f"  {task}: exported {value:.6g} (trial {r.trial_metrics.get(task, float('nan')):.6g})"
        )
    if r.mergekit is not None:
        click.echo(f"mergekit config: {r.mergekit}")
    else:
        click.echo(f"no mergekit config: {r.mergekit_note}")


@main.group()
def zoo() -> None:
    """Embedded model pools for demos, tests and benchmarks."""


@zoo.command("build")
@click.argument("name")
@click.option("--threads", default=1, show_default=True, help="Torch threads for training.")
def zoo_build(name: str, threads: int) -> None:
    """Build zoo NAME (cached; a no-op when already built) and print its folder."""
    from mergesweep.zoo import ensure_zoo

    click.echo(str(ensure_zoo(name, progress=True, threads=threads)))


def _quickstart() -> Path:
    here = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.yaml"
    if not here.is_file():
        from mergesweep.errors import MissingFileError

        raise MissingFileError(f"demo: '{here}' not found (install mergesweep from its repository)")
    return here


@main.command()
@click.argument("overrides", nargs=-1)
@_storage_opt
def demo(overrides: tuple[str, ...], storage: str) -> None:
    """Build the digits zoo if needed and run experiments/quickstart.yaml."""
    from mergesweep.api import run as api_run

    _print_summary(api_run(_quickstart(), [*overrides, f"storage={storage}"], progress=True))


if __name__ == "__main__":  # pragma: no cover
    main()
