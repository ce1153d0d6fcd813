"""The command line: thin. Parses arguments, calls the library, prints, exits with a clear code.

Exit codes: 0 done, 2 bad input (one line on stderr saying what to do), 130 interrupted.
"""

from __future__ import annotations

import math
import re
import sys
import time

import click

from groklab.errors import UserError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="groklab")
def cli() -> None:
    """groklab: reproduce and study grokking."""


@cli.command()
@click.argument("spec", required=False)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config value (repeatable)."
)
@click.option("--seed", type=int, help="Seed for data split, init and batch order.")
@click.option("--out", type=click.Path(), help="Run directory to create (default runs/NAME-sSEED-TIME).")
@click.option("--device", help="auto (default: CUDA if available), cpu, cuda or cuda:N.")
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue the run in this directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Do not write RUN_DIR/report.html at the end.")
@click.option(
    "--threads", type=int, help="CPU threads (default: the CPUs this process may use; see docs/results/speed.md)."
)
@click.option(
    "--report-to",
    multiple=True,
    metavar="TRACKER",
    help="Mirror metrics, config and report to tensorboard, wandb or mlflow as the run goes (offline, files in "
    "the run directory; repeatable; see docs/trackers.md).",
)
def run(
    spec: str | None,
    overrides: tuple[str, ...],
    seed: int | None,
    out: str | None,
    device: str | None,
    resume_dir: str | None,
    quiet: bool,
    no_report: bool,
    threads: int | None,
    report_to: tuple[str, ...],
) -> None:
    """Train PRESET or FILE.yaml into a new run directory, or --resume RUN_DIR."""
    import groklab
    from groklab.config import load_config

    if resume_dir:
        if spec or overrides or seed is not None or out:
            raise UserError("--resume continues a run with its own config; give no PRESET, --set, --seed or --out")
        existing = groklab.load_run(resume_dir)
        if existing.summary.get("status") in ("finished", "stopped_early", "diverged"):
            done = f"{resume_dir}: already {existing.summary['status']} at step {existing.summary.get('step')}"
            if report_to:
                groklab.resume(resume_dir, report_to=report_to)  # mirrored to the trackers whole
                click.echo(f"{done}; sent to {', '.join(report_to)}")
            else:
                click.echo(f"{done}; nothing to do")
            return
        total = existing.config.train.max_steps
        with _progress(total, quiet) as on_step:
            result = groklab.resume(
                resume_dir, device=device, progress=on_step, report=not no_report, threads=threads, report_to=report_to
            )
    else:
        if not spec:
            raise UserError("give a PRESET or FILE.yaml to run (`groklab presets` lists presets), or --resume RUN_DIR")
        config = load_config(spec, overrides, seed)
        with _progress(config.train.max_steps, quiet) as on_step:
            result = groklab.run(
                config, out, device=device, progress=on_step, report=not no_report, threads=threads, report_to=report_to
            )
    _print_summary(result)
    if result.dir.report_path.is_file():
        click.echo(f"report: {result.dir.report_path}")
    if result.summary.get("status") == "interrupted":
        click.echo(f"interrupted; continue with: groklab run --resume {result.path}", err=True)
        sys.exit(EXIT_INTERRUPTED)


@cli.command()
@click.argument("spec")
@click.option(
    "--seeds", default="0-4", show_default=True, help="Seeds to run: a range and/or list, e.g. 0-39 or 0,3,5-7."
)
@click.option(
    "--workers",
    type=int,
    help="Runs (or batches) trained at the same time, each in its own process (default: on a CPU one per core, "
    "with one thread each, up to the number of runs; on a GPU 1).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config value (repeatable)."
)
@click.option("--out", type=click.Path(), help="Sweep directory (default sweeps/NAME; the same command resumes it).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option(
    "--threshold",
    type=float,
    default=0.9,
    show_default=True,
    help="Test accuracy at which a run counts as converged (the sweep table).",
)
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY.PATH=V1,V2,...",
    help="Also sweep a config field over these values (repeatable: every combination).",
)
@click.option("--depths", help="Shorthand for --grid model.n_layers=D1,D2,... (e.g. 2,4,6,8,10).")
@click.option("--threads", type=int, help="CPU threads per worker (default: the CPUs this process may use / workers).")
@click.option(
    "--report-to",
    multiple=True,
    metavar="TRACKER",
    help="Mirror each run's metrics, config and report to tensorboard, wandb or mlflow as it goes, grouped by the "
    "sweep (offline, files in the sweep directory; repeatable; see docs/trackers.md).",
)
@click.option(
    "--batch",
    type=int,
    default=1,
    show_default=True,
    help="Runs trained together in one process as one batched model (seeds, lr, weight decay, ... may differ).",
)
@click.option(
    "--on",
    "engine",
    type=click.Choice(["local", "ray", "slurm", "submitit-local"]),
    default="local",
    show_default=True,
    help="Where the runs train: worker processes here, a Ray cluster, SLURM (through "
    "submitit), or SLURM's path on this machine (submitit's local executor).",
)
@click.option(
    "--address",
    default="auto",
    show_default=True,
    help="[ray] The cluster: auto (the one this machine belongs to), HOST:PORT, or local (a private one).",
)
@click.option("--partition", help="[slurm] Partition.")
@click.option(
    "--time", "time_limit", help="[slurm] Time limit of each array task: minutes or [D-]HH:MM[:SS] (default 24:00:00)."
)
@click.option("--mem", "mem_gb", type=float, help="[slurm] Memory per array task, GB.")
@click.option("--gpus", type=int, help="[slurm] GPUs per array task (default: 1 with --device cuda, else 0).")
@click.option(
    "--runs-per-job",
    type=int,
    help="[slurm] Runs (or batches) one after another in each array task (default: packed into at most 64 tasks).",
)
@click.option("--max-jobs", type=int, help="[slurm] Array tasks running at once (SLURM's %N).")
def sweep(
    spec: str,
    seeds: str,
    workers: int | None,
    overrides: tuple[str, ...],
    out: str | None,
    device: str | None,
    threshold: float,
    grid: tuple[str, ...],
    depths: str | None,
    threads: int | None,
    batch: int,
    engine: str,
    address: str,
    partition: str | None,
    time_limit: str | None,
    mem_gb: float | None,
    gpus: int | None,
    runs_per_job: int | None,
    max_jobs: int | None,
    report_to: tuple[str, ...],
) -> None:
    """Train PRESET or FILE.yaml once per seed (and grid point), one run or a batch of runs per unit of work, in
    local worker processes, on a Ray cluster or on SLURM; shows a live table of the runs; resumable."""
    from groklab.config import load_config
    from groklab.sweep import parse_grid, parse_seeds
    from groklab.sweep import sweep as run_sweep
    from groklab.sweep.engines import EngineOptions

    config = load_config(spec, overrides)
    points = parse_grid(list(grid) + ([f"model.n_layers={depths}"] if depths else []))
    slurm = {
        k: v
        for k, v in dict(
            partition=partition, time=time_limit, mem_gb=mem_gb, gpus=gpus, runs_per_job=runs_per_job, max_jobs=max_jobs
        ).items()
        if v is not None
    }
    with _live_sweep() as (say, watch):
        try:
            result = run_sweep(
                config,
                parse_seeds(seeds),
                out,
                workers=workers,
                grid=points,
                device=device,
                threshold=threshold,
                threads=threads,
                batch=batch,
                on=engine,
                engine=EngineOptions(address=address, slurm=slurm),
                report_to=report_to,
                progress=say,
                watch=watch,
            )
        except KeyboardInterrupt:
            click.echo(
                "sweep interrupted: its runs checkpointed and stopped; run the same command again to continue", err=True
            )
            sys.exit(EXIT_INTERRUPTED)
    _print_sweep(result)


class _live_sweep:
    """While a sweep runs: its event lines, and a live table of its runs (a terminal) or its totals line
    every 30 s (a log)."""

    def __enter__(self):
        self.live, self.last = None, 0.0
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=2, transient=True)
            self.live.start()
        return self._say, self._watch

    def _say(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line, err=True)

    def _watch(self, sweep_dir) -> None:
        from groklab.sweep import progress_table, progress_totals

        table = progress_table(sweep_dir)
        if self.live is not None:
            self.live.update(_rich_progress(table, progress_totals(table)))
        elif time.monotonic() - self.last >= 30:
            click.echo(progress_totals(table), err=True)
            self.last = time.monotonic()

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()


def _rich_progress(table, totals: str, rows: int = 30):
    """The running runs first, then the others, at most `rows` lines, and the totals."""
    from rich.console import Group
    from rich.table import Table

    from groklab.sweep import duration

    shown = (
        table.assign(order=(table["status"] != "running").astype(int)).sort_values("order", kind="stable").head(rows)
    )
    view = Table(box=None, header_style="bold")
    keys = list(table.columns[: table.columns.get_loc("seed")])  # the grid's keys come first
    for col in [*keys, "seed", "status", "step", "value", "steps/s", "left"]:
        view.add_column(
            table["metric"].iloc[0] if col == "value" and len(table) else col,
            justify="left" if col == "status" else "right",
        )
    for _, r in shown.iterrows():
        view.add_row(
            *[str(r[k]) for k in keys],
            str(r["seed"]),
            r["status"],
            "-" if _missing(r["step"]) else f"{int(r['step'])}/{r['max_steps']}",
            "-" if _missing(r["value"]) else f"{r['value']:.3f}",
            "-" if _missing(r["steps_per_s"]) else f"{r['steps_per_s']:.1f}",
            "-" if _missing(r["left_s"]) else duration(r["left_s"]),
        )
    more = [f"... and {len(table) - rows} more"] if len(table) > rows else []
    return Group(view, *more, totals)


def _missing(value) -> bool:
    return value is None or value != value


@cli.command("map")
@click.argument("sweep_dir", type=click.Path())
@click.option(
    "--features",
    default="base",
    show_default=True,
    help="A feature set (base, ablation, modular_best, parities_best, ...) or metrics columns, comma-separated.",
)
@click.option(
    "--states", default="bic", show_default=True, help="Number of latent states K, or bic / aic to choose K in 1..8."
)
@click.option(
    "--threshold",
    type=float,
    help="Value of --metric at which a run has converged (default: the sweep's; an imported sweep's: derived, "
    "the worst of the runs' final values).",
)
@click.option(
    "--zscore",
    type=click.Choice(["per_run", "global"]),
    default="per_run",
    show_default=True,
    help="Standardise each run's features within the run (the paper) or with the training runs' statistics.",
)
@click.option("--restarts", type=int, default=5, show_default=True, help="Seeded EM restarts per K.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the restarts (random_state).")
@click.option("--jobs", type=int, default=-1, show_default=True, help="Processes for the fits (-1: all cores).")
@click.option(
    "--metric",
    help="The metrics column convergence is read from (default: test_acc, or what an imported sweep recorded; "
    "e.g. gen_first_word_acc for a structural sweep, test_loss or text_loss for imported LM checkpoints).",
)
@click.option(
    "--covariance",
    type=click.Choice(["auto", "full", "diag"]),
    default="auto",
    show_default=True,
    help="The HMM's covariance; auto: the sweep's (full; diag for imported LM series, as Hu et al. for their "
    "5 MultiBERTs).",
)
@click.option(
    "--covariance-floor",
    type=float,
    default=0.0,
    show_default=True,
    metavar="F",
    help="Add F to every state's covariance diagonal after each EM step (z units; e.g. 0.01): keeps full "
    "covariances over nearly collinear features (the base set) from collapsing. 0: none, as the paper.",
)
@click.option(
    "--point",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="For a grid sweep: the point whose seeds are mapped (e.g. model.n_layers=4); into map/POINT/.",
)
@click.option(
    "--selection",
    type=click.Choice(["best", "mean"]),
    default="best",
    show_default=True,
    help="The criterion of each K from its best restart's held-out log-likelihood, or the mean over "
    "restarts (the released code's).",
)
@click.option(
    "--robustness",
    type=int,
    default=0,
    show_default=True,
    metavar="N",
    help="Repeat model selection and the detour test N more times with other restart seeds.",
)
@click.option("--bootstrap", is_flag=True, help="With --robustness: each refit on a resample of the runs.")
@click.option(
    "--name",
    help="Keep this map beside the sweep's own, in SWEEP_DIR/map-NAME/ (e.g. --states 6 --name k6); without it "
    "the map replaces SWEEP_DIR/map/.",
)
def map_(
    sweep_dir: str,
    features: str,
    states: str,
    threshold: float | None,
    zscore: str,
    restarts: int,
    seed: int,
    jobs: int,
    metric: str | None,
    covariance: str,
    covariance_floor: float,
    point: tuple[str, ...],
    selection: str,
    robustness: int,
    bootstrap: bool,
    name: str | None,
) -> None:
    """Fit the HMM training map of a sweep; write SWEEP_DIR/map/ (map SVG/PNG, CSV tables, report.html), or
    SWEEP_DIR/map-NAME/ with --name."""
    from groklab.store import SweepDir
    from groklab.sweep.maps import map_sweep

    if states not in ("bic", "aic"):
        try:
            states = int(states)
            assert 1 <= states <= 50
        except (ValueError, AssertionError):
            raise UserError(f"--states takes a number of states (1-50), bic or aic; got '{states}'") from None
    if restarts < 1:
        raise UserError(f"--restarts must be at least 1, got {restarts}")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--name takes letters, digits, '_', '.' and '-' (a directory name); got '{name}'")
    if not (0 <= covariance_floor < math.inf):
        raise UserError(
            f"--covariance-floor takes a number >= 0 (a variance in z units, e.g. 0.01); got {covariance_floor}"
        )
    if robustness < 0 or (bootstrap and robustness == 0):
        raise UserError(f"--robustness takes a number of refits >= 0 (--bootstrap needs one > 0); got {robustness}")
    sweep = SweepDir.open(sweep_dir)
    threshold = sweep.threshold if threshold is None else threshold
    result = map_sweep(
        sweep,
        features if "," not in features else features.split(","),
        states,
        threshold,
        column=metric or sweep.metric,
        covariance=sweep.covariance if covariance == "auto" else covariance,
        covariance_floor=covariance_floor,
        point=_point(point),
        zscore=zscore,
        n_restarts=restarts,
        random_state=seed,
        n_jobs=jobs,
        selection=selection,
        robustness=robustness,
        bootstrap=bootstrap,
        name=name,
        progress=lambda line: click.echo(line, err=True),
    )
    model, detours = result.model, result.detours
    click.echo(f"training map: {result.path}  (report: {result.path / 'report.html'})")
    click.echo(
        model.selection_[["n_states", "test_ll_best", "aic", "bic", "converged", "n_failed"]].to_string(
            index=False, float_format=lambda v: f"{v:.1f}"
        )
    )
    click.echo(f"states: K = {model.n_states_}" + (f" (held-out {states.upper()})" if isinstance(states, str) else ""))
    cols = [
        "state",
        "occupancy",
        "n_runs",
        "test_acc",
        "mean_conv_visit",
        "mean_conv_not",
        "r",
        "p",
        "p_holm",
        "detour",
    ]
    click.echo(result.states[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))
    conv = result.convergence
    if result.column is None:
        click.echo("convergence: the runs have no convergence metric (see --metric); no detour test")
    else:
        crossing = "<=" if result.column.endswith("_loss") else ">="
        click.echo(
            f"converged ({result.column} {crossing} {result.threshold:.4g}): {int(conv['converged'].sum())} of "
            f"{len(conv)}; censored: {int(conv['censored'].sum())}"
        )
    found = detours[detours["detour"]]
    click.echo(
        "detours: "
        + (
            "not tested"
            if result.column is None
            else ", ".join(
                f"state {int(r.state)} (r = {r.r:+.3f}, p = {r.p:.2g}, Holm p = {r.p_holm:.2g})"
                for r in found.itertuples()
            )
            or "none at Holm-adjusted p < 0.05"
        )
    )
    if result.robustness is not None:
        fits = result.robustness.fits[result.robustness.fits["fit"] > 0]
        click.echo(
            f"robustness over {len(fits)} refits: K chosen "
            + ", ".join(f"{k}: {n}" for k, n in fits["n_states"].value_counts().sort_index().items())
            + f"; a detour at p < 0.05 in {int((fits['n_detours_raw'] > 0).sum())} of {len(fits)} "
            f"(Holm-adjusted: {int((fits['n_detours'] > 0).sum())}); this map's states over the refits:"
        )
        click.echo(result.robustness.summary.to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option(
    "--key-freqs",
    help="final (the last checkpoint's), each (each checkpoint's) or K1,K2,... (default: the run's config)",
)
@click.option("--names", help="measure sets, comma-separated (default: the run's config; e.g. weights,fourier)")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option(
    "--every", type=int, help="Only the checkpoints at multiples of this many steps (e.g. the LLC on a subset)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="measures.KEY=VALUE",
    help="A measure setting for this pass (repeatable), e.g. measures.llc_epsilon=1e-3.",
)
def measure(
    run_dir: str,
    key_freqs: str | None,
    names: str | None,
    device: str | None,
    every: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Recompute the measures over a run's saved checkpoints (or every finished run of a sweep) and rewrite
    those metrics columns."""
    from groklab.experiment import DONE
    from groklab.experiment import measure as remeasure
    from groklab.store import SweepDir

    if key_freqs not in (None, "final", "each"):
        try:
            key_freqs = [int(k) for k in key_freqs.split(",")]
        except ValueError:
            raise UserError(f"--key-freqs takes final, each or a list like 14,35,41; got '{key_freqs}'") from None
    names = tuple(names.split(",")) if names else None
    if SweepDir.is_sweep(run_dir):
        from groklab.sweep import sweep_runs

        sweep = SweepDir.open(run_dir)
        runs = [run for point in sweep.points for run in sweep_runs(sweep, point).values() if run.status in DONE]
        for i, run in enumerate(runs, 1):
            click.echo(f"[{i}/{len(runs)}] {run.path}", err=True)
            remeasure(run.path, key_freqs, device=device, names=names, every=every, overrides=overrides)
        click.echo(f"measured {len(runs)} finished run(s) of {run_dir}")
        return
    _print_summary(remeasure(run_dir, key_freqs, device=device, names=names, every=every, overrides=overrides))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR... | SWEEP_DIR")
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    help="HTML file (default: RUN_DIR/report.html; several runs: ./groklab-comparison.html).",
)
@click.option("--png", type=click.Path(), help="Also write each figure as PNG (and SVG) into this directory.")
def report(run_dirs: tuple[str, ...], out: str | None, png: str | None) -> None:
    """Write the interactive HTML report of a run, or overlay several runs' curves; of a sweep, every run's
    curves and, for a grid (e.g. --depths, --grid task.frac_train=...), each held-out metric or the
    convergence step against the grid with 95% intervals over seeds (SWEEP_DIR/report.html)."""
    from groklab.store import SweepDir

    if len(run_dirs) == 1 and SweepDir.is_sweep(run_dirs[0]):
        from groklab.sweep import write_sweep_report

        if out is not None:
            raise UserError("a sweep's report is SWEEP_DIR/report.html; leave out -o/--out")
        click.echo(f"report: {write_sweep_report(run_dirs[0], png)}")
        return
    from groklab.report import write_report

    click.echo(f"report: {write_report(list(run_dirs), out, png)}")


@cli.command()
@click.argument("sweeps", nargs=-1, required=True, metavar="SWEEP_DIR[@KEY=VALUE,...] ...")
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    default="compare.html",
    show_default=True,
    help="The page; its tables go beside it (OUT_runs.csv, OUT_stats.csv, OUT_verdicts.csv).",
)
@click.option("--labels", help="Names of the populations, comma-separated (default: the sweep directories' names).")
@click.option("--no-maps", is_flag=True, help="Do not fit training maps the sweeps lack (stored maps are still shown).")
@click.option(
    "--min-runs",
    type=int,
    default=3,
    show_default=True,
    help="Runs a population needs before a claim is judged for it.",
)
def compare(sweeps: tuple[str, ...], out: str, labels: str | None, no_maps: bool, min_runs: int) -> None:
    """Compare populations (sweeps, or points of a grid sweep) through the same lenses: stages in normalized
    time, leads of the structure measure and the LLC, cleanup, training maps, and a verdict claim by claim."""
    from groklab.sweep.compare import compare_sweeps

    if min_runs < 2:
        raise UserError(f"--min-runs must be at least 2 (a bootstrap of one run says nothing), got {min_runs}")
    result = compare_sweeps(
        list(sweeps),
        out,
        labels.split(",") if labels else None,
        fit_maps=not no_maps,
        min_runs=min_runs,
        progress=lambda line: click.echo(line, err=True),
    )
    for pop in result.populations:
        click.echo(
            f"{pop.label}: {len(pop.runs)} run(s), {int(pop.table['generalizes'].sum())} generalize; "
            f"map: {pop.map_note}"
        )
    with _wide_pandas():
        click.echo(result.verdicts.to_string(index=False))
    click.echo(f"compare: {result.path}")


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_colwidth", 70)


@cli.group("import")
def import_group() -> None:
    """Bring foreign checkpoints into groklab run or sweep directories (one subcommand per format)."""


@import_group.command("hf")
@click.argument("series_dir", type=click.Path())
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Sweep directory to create (an earlier import there is replaced; its cached statistics are reused).",
)
@click.option(
    "--pattern",
    metavar="REGEX",
    help="Read seed and step from each checkpoint's name (its path under SERIES_DIR, or ORG/NAME@REVISION in a "
    "hub cache) with this regular expression: named groups step and, optionally, seed; e.g. "
    "'run(?P<seed>\\d+)/ckpt_(?P<step>\\d+)'. Default: seed_N / seedN and checkpoint-N / stepN / step_Nk.",
)
@click.option(
    "--eval-text",
    type=click.Path(),
    help="A text file: add each checkpoint's loss on it (text_loss; masked-LM loss for BERT, next-token for "
    "GPT-NeoX), tokenized with the checkpoint's own tokenizer.",
)
@click.option("--eval-tokens", type=int, default=16384, show_default=True, help="Tokens of --eval-text scored.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer directory for --eval-text where the series has none.")
def import_hf_cmd(
    series_dir: str, out: str, pattern: str | None, eval_text: str | None, eval_tokens: int, tokenizer: str | None
) -> None:
    """Import a Hugging Face checkpoint series (MultiBERTs, Pythia, a Trainer's checkpoint-N/ directories, or a
    hub cache with one revision per step) as a sweep: one run per seed, one row of weight statistics per
    checkpoint; then `groklab map SWEEP_DIR`. See docs/lm-maps.md."""
    from groklab.store.importers.hf import import_hf

    sweep = import_hf(
        series_dir,
        out,
        pattern=pattern,
        eval_text=eval_text,
        eval_tokens=eval_tokens,
        tokenizer=tokenizer,
        progress=lambda line: click.echo(line, err=True),
    )
    click.echo(
        f"imported {len(sweep.seeds)} run(s) into {sweep.path}; convergence metric: {sweep.metric or 'none'}; "
        f"next: groklab map {sweep.path}"
    )


def _import_run_options(fn):
    """The options `groklab import nanda` and `groklab import transformer-lens` share."""
    for option in reversed(
        [
            click.option("--out", required=True, type=click.Path(), help="Run directory to create (must not exist)."),
            click.option("--task", help="The groklab task the model was trained on, when the file cannot say."),
            click.option(
                "--set",
                "overrides",
                multiple=True,
                metavar="KEY.PATH=VALUE",
                help="Override an inferred config value (repeatable).",
            ),
            click.option("--device", help="Where the checkpoints are evaluated: cpu (default), cuda or cuda:N."),
        ]
    ):
        fn = option(fn)
    return fn


@import_group.command("nanda")
@click.argument("path", type=click.Path())
@_import_run_options
def import_nanda_cmd(path: str, out: str, task: str | None, overrides: tuple[str, ...], device: str | None) -> None:
    """Import checkpoints of Nanda et al.'s released code (progress-measures-paper: full_run_data.pth, a
    Trainer's final.pth or EPOCH.pth, or the directory it saves them in) as a run. See docs/importing.md."""
    _import_run("nanda", path, out, task=task, overrides=overrides, device=device)


@import_group.command("transformer-lens")
@click.argument("path", type=click.Path())
@_import_run_options
@click.option(
    "--config",
    "config_path",
    type=click.Path(),
    help="The HookedTransformerConfig as JSON (cfg.to_dict()) for a bare state dict (default: PATH.json or config.json beside it).",
)
def import_tl_cmd(
    path: str, out: str, task: str | None, overrides: tuple[str, ...], device: str | None, config_path: str | None
) -> None:
    """Import a TransformerLens HookedTransformer checkpoint (a state dict with its config, e.g. the
    TransformerLens grokking demo's file) as a run. See docs/importing.md."""
    _import_run("transformer-lens", path, out, task=task, overrides=overrides, device=device, config=config_path)


def _import_run(fmt: str, path: str, out: str, **options) -> None:
    """Import, then show the config inferred, where each value came from, and the run's summary."""
    from groklab.importing import import_run

    result = import_run(fmt, path, out, **options)
    click.echo(f"config inferred from {path} (written to {result.run.path / 'config.yaml'}):")
    click.echo(result.config_yaml.rstrip())
    click.echo("inferred:")
    for note in result.notes:
        click.echo(f"  {note}")
    steps = result.steps
    shown = ", ".join(map(str, steps)) if len(steps) <= 6 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"
    curves = ", ".join(f"{name} ({len(c)} values)" for name, c in result.source["curves"].items())
    click.echo(
        f"imported {len(steps)} checkpoint(s) at steps {shown}, each evaluated by groklab (metrics.jsonl)"
        + (f"; the file's own curves in source.json: {curves}" if curves else "")
    )
    _print_summary(result.run)


@cli.command()
def presets() -> None:
    """List presets with their source and expected outcome."""
    from groklab.config import load_preset, preset_names

    for name in preset_names():
        cfg = load_preset(name)
        click.echo(click.style(name, bold=True))
        click.echo(f"  source:   {cfg.source}")
        click.echo(f"  expected: {cfg.expected}")


@cli.command()
@click.argument("run_dir", type=click.Path())
def show(run_dir: str) -> None:
    """Print a run's or a sweep's summary."""
    import groklab
    from groklab.store import SweepDir

    if SweepDir.is_sweep(run_dir):
        _print_sweep(SweepDir.open(run_dir))
    else:
        _print_summary(groklab.load_run(run_dir))


def _point(items: tuple[str, ...]) -> dict | None:
    """--point KEY.PATH=VALUE (repeatable) -> {key: value}, or None."""
    from groklab.sweep import parse_grid

    grid = parse_grid(list(items))
    if any(len(values) != 1 for values in grid.values()):
        raise UserError("--point takes KEY.PATH=VALUE with one value (repeat it for several keys)")
    return {key: values[0] for key, values in grid.items()} or None


def _print_sweep(sweep_dir) -> None:
    """The sweep table: one line per run, then how many converged and when; for held-out task metrics
    (structural grokking) their best and final values and the per-point summary instead."""
    from groklab.dynamics.summary import is_structural
    from groklab.experiment import DONE
    from groklab.sweep import sweep_table

    table = sweep_table(sweep_dir)
    structural = is_structural(table)
    if (table["status"] == "running").any():  # a sweep still running: where each run is
        from groklab.sweep import duration, progress_table, progress_totals

        live = progress_table(sweep_dir)
        totals = progress_totals(live)
        live = live.assign(
            step=[f"{s:.0f}/{m}" if s == s else "-" for s, m in zip(live["step"], live["max_steps"])],
            left_s=["-" if _missing(s) else duration(s) for s in live["left_s"]],
        )
        click.echo(
            live.drop(columns=["max_steps", "elapsed_s", "batch"])
            .rename(columns={"steps_per_s": "steps/s", "left_s": "left"})
            .to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}")
        )
        click.echo(totals)
        if not structural and (line := _convergence_line(table, " so far")):
            click.echo(line)
        if sweep_dir.points[0] and table["status"].isin(DONE).any():  # a grid: what the runs that ended say so far
            _print_grid_summary(table, list(sweep_dir.points[0]), "so far, over the runs that ended")
        return
    sweep_dir.write_table(table)
    grid = list(sweep_dir.points[0])
    click.echo(f"sweep {sweep_dir.path}: {len(table)} runs; table: {sweep_dir.path / 'table.csv'}")
    if structural:
        token_level = {f"{k}_{split}_{m}" for k in ("final", "max") for split in ("id", "gen") for m in ("acc", "loss")}
        cols = [
            *grid,
            "seed",
            "status",
            *[c for c in table if c.startswith(("final_id_", "max_gen_", "final_gen_")) and c not in token_level],
            "final_t_score",
            "elapsed_s",
        ]
    elif sweep_dir.imported:  # foreign checkpoints: their losses, no accuracies or wall time
        click.echo(f"imported ({sweep_dir.imported.get('format')}) from {sweep_dir.imported.get('series')}")
        cols = ["seed", "status", "converged", "convergence_step", "last_step"]
        cols += [f"final_{k}" for k in ("train_loss", "test_loss", "test_acc", "text_loss")]
        cols = [c for c in cols if c in table and table[c].notna().any()]
    else:
        cols = [
            *grid,
            "seed",
            "status",
            "converged",
            "convergence_step",
            "step_train_acc_99",
            "final_train_acc",
            "final_test_acc",
            "elapsed_s",
        ]
    click.echo(
        _not_yet(table)[[c for c in cols if c in table]].to_string(
            index=False, na_rep="-", float_format=lambda v: f"{v:.3g}"
        )
    )
    if not structural and (line := _convergence_line(table)):
        click.echo(line)
    if grid or structural:
        _print_grid_summary(table, grid)


def _not_yet(table):
    """The sweep table to print: a run that has not converged shows its convergence step as "> " the last step
    it was evaluated at (the table keeps that step, with `censored`, for the survival curves)."""
    if "convergence_step" not in table or "converged" not in table:
        return table
    return table.assign(
        convergence_step=[
            "-" if _missing(step) else f"{'' if done == True else '> '}{step:.0f}"  # noqa: E712 (NaN: no metrics)
            for step, done in zip(table["convergence_step"], table["converged"])
        ]
    )


def _convergence_line(table, when: str = "") -> str | None:
    """How many runs of the sweep table converged, their convergence steps, and, while some have not, the
    median over all runs with those counted as later (`dynamics.censored_median`: known, or a lower bound)."""
    from groklab.dynamics import censored_median

    if "converged" not in table or not table["converged"].notna().any():
        return None
    converged = table["converged"] == True  # noqa: E712 (NaN: no metrics yet)
    steps = table.loc[converged, "convergence_step"]
    metric = table.attrs.get("metric") or "test_acc"
    crossing = "<=" if metric.endswith("_loss") else ">="
    line = f"converged{when} ({metric.replace('_', ' ')} {crossing} {table.attrs['threshold']:.4g}): "
    line += f"{len(steps)} of {len(table)}"
    if len(steps) > 1:
        line += f"; convergence step median {steps.median():.0f}, mean {steps.mean():.0f}, sd {steps.std():.0f}"
    if len(steps) < len(table):
        median = _censored(*censored_median(table["convergence_step"], ~converged))
        line += (
            f"{' of those' if len(steps) > 1 else ''}; over all {len(table)} (the {len(table) - len(steps)} "
            f"not converged counted as later): median {median}"
        )
    return line


def _print_grid_summary(table, grid: list[str], when: str = "") -> None:
    """grid_summary's lines: held-out task metrics (structural) or convergence (a modular grid)."""
    from groklab.dynamics.summary import is_structural
    from groklab.sweep import grid_summary

    summary = grid_summary(table, grid)
    summary = summary[summary["runs"] > 0]  # a point none of whose runs has ended says nothing yet
    when = f", {when}" if when else ""
    if is_structural(table):
        click.echo(
            f"per grid point{when} (id learnt: share of seeds whose in-distribution twin reaches 0.95; crossed: "
            "share whose value reaches 0.8 at some point; of id learnt: the final mean over those seeds alone; "
            "[95% bootstrap interval over seeds]):"
        )
        click.echo(_grid_lines(summary, grid).to_string(index=False))
        if len(grid) == 1 and len(summary) >= 3:  # the shape along the grid: an inverted U, or not
            from groklab.dynamics.compare import describe_peak
            from groklab.sweep import grid_peaks

            click.echo(
                f"where the mean over seeds peaks over {grid[0]} (of the final value; 'crossing 0.8': of the share "
                "of seeds that reach 0.8, Murty et al.'s Fig. 3a):"
            )
            for metric, (shares, interior) in grid_peaks(table, grid[0]).items():
                click.echo(f"  {metric}: {describe_peak(shares, interior)}")
        _print_structure_correlation(table, grid)
    if grid and "convergence_step_mean" in summary:
        click.echo(
            f"per grid point{when} (converged: share of seeds; step: of those that converge; median, all runs: "
            "those that never converge counted as later, '>=' where that leaves it a bound; [95% bootstrap "
            "interval over seeds]):"
        )
        click.echo(_convergence_lines(summary, grid).to_string(index=False))


def _print_structure_correlation(table, grid: list[str]) -> None:
    """sweep.structure_correlation as one line: does a run's t-score go with its generalization?"""
    from groklab.sweep import structure_correlation

    found = structure_correlation(table, grid)
    if not found or math.isnan(found["all"][0]):
        return
    (rho, p, n), within = found["all"], found["within"]
    line = (
        f"final t_score against final {found['metric']}, over the {n} runs that learnt the in-distribution set: "
        f"Spearman {rho:.2f} (p {p:.2g})"
    )
    if grid and not math.isnan(within[0]):
        line += f"; within each {', '.join(grid)} (centred on its mean): {within[0]:.2f} (p {within[1]:.2g})"
    click.echo(line)


def _grid_lines(summary, grid: list[str]):
    """grid_summary as one line per grid point and metric: in-distribution learnt, crossed, final mean with
    intervals, SD."""
    import pandas as pd

    metrics = [c[: -len("_final_mean")] for c in summary if c.endswith("_final_mean")]
    lines = [
        {
            **{k: row[k] for k in grid},
            "runs": int(row["runs"]),
            "metric": m,
            "id learnt": _with_interval(row, f"{m}_id_learned_share", f"{m}_id_learned"),
            "crossed 0.8": _with_interval(row, f"{m}_crossed_0.8", f"{m}_crossed"),
            "final mean": _with_interval(row, f"{m}_final_mean", f"{m}_final"),
            "of id learnt": _with_interval(row, f"{m}_final_learnt_mean", f"{m}_final_learnt"),
            "final SD": f"{row[f'{m}_final_sd']:.2f}",
        }
        for row in summary.to_dict("records")
        for m in metrics
    ]
    return pd.DataFrame(lines)


def _convergence_lines(summary, grid: list[str]):
    """grid_summary's convergence columns as one line per grid point."""
    import pandas as pd

    return pd.DataFrame(
        {
            **{k: row[k] for k in grid},
            "runs": int(row["runs"]),
            "converged": _with_interval(row, "converged_share", "converged"),
            "step mean": _with_interval(row, "convergence_step_mean", "convergence_step", ".0f"),
            "step median": _with_interval(row, "convergence_step_median", None, ".0f"),
            "median, all runs": _censored(row["convergence_step_median_all"], row["convergence_step_median_known"]),
        }
        for row in summary.to_dict("records")
    )


def _censored(median: float, known: bool) -> str:
    """A median over runs some of which have not converged (dynamics.censored_median): the step, or '>= '
    the step where it is only a lower bound."""
    return "-" if math.isnan(median) else f"{'' if known else '>= '}{median:.0f}"


def _with_interval(row: dict, column: str, prefix: str | None, digits: str = ".2f") -> str:
    """row[column] with its interval row[prefix_ci_low], row[prefix_ci_high] where there is one; "-" for a
    value not there or NaN."""
    value = row.get(column)
    if value is None or math.isnan(value):
        return "-"
    low, high = (row.get(f"{prefix}_ci_low"), row.get(f"{prefix}_ci_high")) if prefix else (None, None)
    return f"{value:{digits}}" + (f" [{low:{digits}}, {high:{digits}}]" if low is not None else "")


def _print_summary(result) -> None:
    """The run's summary, computed from its metrics now (so a run in progress or killed shows too)."""
    from groklab.dynamics import detect_phases, detect_stages, summarize
    from groklab.dynamics.summary import is_structural, structural_headline

    metrics = result.metrics
    live = summarize(metrics) if not metrics.empty else {}
    status = {"new": "no checkpoint yet", "killed": "stopped without finishing (killed?); resume with --resume"}.get(
        result.status, result.status
    )
    cfg = result.config
    lines = [("run", str(result.path)), ("preset", cfg.name), ("source", cfg.source), ("status", status)]
    imported = result.summary.get("imported")
    if live and imported:  # foreign checkpoints (groklab import): what they are and their last values
        finals = {k: metrics[k].dropna() for k in ("train_loss", "test_loss", "test_acc", "text_loss") if k in metrics}
        lines += [
            ("imported", f"{imported.get('model_type')} checkpoints of {imported.get('series')}"),
            ("checkpoints", f"{live['evaluations']}, steps {int(metrics['step'].min())} to {live['last_step']}"),
            ("final", ", ".join(f"{k} {v.iloc[-1]:.4g}" for k, v in finals.items() if len(v)) or "no losses recorded"),
        ]
    elif live:
        lines += [("step", f"{live['last_step']} of {cfg.train.max_steps}")]
        structural = is_structural(metrics)
        grok = live["step_test_acc_99"]
        if structural:
            lines += structural_headline(live)
        else:
            lines += [
                (
                    "grokked",
                    f"yes: test acc >= 99% at step {grok}"
                    + (
                        f" ({live['elapsed_s_test_acc_99']:.1f} s)"
                        if live.get("elapsed_s_test_acc_99") is not None
                        else ""
                    )
                    if grok is not None
                    else "no (test acc never reached 99%)",
                )
            ]
            lines += [
                (
                    "train acc >= 99%",
                    f"step {live['step_train_acc_99']}" if live["step_train_acc_99"] is not None else "never",
                )
            ]
        lines += [
            (
                "final",
                f"train acc {live['final_train_acc']:.4f}, test acc {live['final_test_acc']:.4f}, "
                f"train loss {live['final_train_loss']:.3g}, test loss {live['final_test_loss']:.3g}",
            )
        ]
        if live.get("last_good_step") != live["last_step"]:
            lines += [("last good step", str(live.get("last_good_step")))]
        summary = result.summary
        where = ", ".join(
            str(summary[k]) + (" thread(s)" if k == "threads" else "")
            for k in ("device", "cpu", "threads", "batch")
            if summary.get(k)
        )
        if live["elapsed_s"] == live["elapsed_s"]:  # NaN: no timings (an imported run)
            lines += [
                (
                    "wall time",
                    f"{live['elapsed_s']:.1f} s ({live['steps_per_s']} steps/s)" + (f" on {where}" if where else ""),
                )
            ]
        lines += [] if structural else _phase_lines(detect_phases(metrics))
        lines += _stage_lines(detect_stages(metrics))
    else:
        lines += [("metrics", "none yet")]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")


def _stage_lines(stages: dict) -> list[tuple[str, str]]:
    """The stages every run has (memorized, structure / LLC onsets, generalized, cleanup) on one line."""
    if not stages:
        return []
    names = {
        "memorized_step": "memorized",
        "structure_onset_step": "structure moves",
        "llc_onset_step": "LLC moves",
        "generalized_step": "generalized",
        "cleanup_end_step": "cleanup ends",
    }
    found = sorted((v, names[k]) for k, v in stages.items() if k in names and v is not None)
    text = ", ".join(f"{name} at {step}" for step, name in found) or "none found"
    leads = ", ".join(
        f"{k.split('_')[0]} leads by {stages[k]:.0%} of the delay"
        for k in ("structure_lead", "llc_lead")
        if stages.get(k) is not None
    )
    return [("stages", text + (f" ({leads})" if leads else ""))] + (
        [("", stages["stages_note"])] if stages.get("stages_note") else []
    )


def _phase_lines(phases: dict) -> list[tuple[str, str]]:
    if not phases:
        return []
    ends = [
        (name.replace("_", " "), phases.get(f"{name}_end")) for name in ("memorization", "circuit_formation", "cleanup")
    ]
    text = ", ".join(f"{name} ends at step {step}" if step is not None else f"no {name}" for name, step in ends)
    return [("phases", text)] + ([("", phases["phase_note"])] if phases.get("phase_note") else [])


class _progress:
    """A rich progress bar fed by the trainer: step, steps/s, live train/test accuracy."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet

    def __enter__(self):
        if self.quiet or not sys.stderr.isatty():
            return self._plain if not self.quiet else None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>7} steps/s"),
            TextColumn("{task.fields[acc]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=self.total, rate="", acc="")
        self.t0, self.s0, self.last = time.perf_counter(), None, 0.0
        return self._update

    def _update(self, step: int, row: dict | None) -> None:
        now = time.perf_counter()
        if self.s0 is None:
            self.s0, self.t0 = step, now
        fields = {}
        if row is not None:
            fields["acc"] = f"train acc {row['train_acc']:.3f}  test acc {row['test_acc']:.3f}"
        if row is not None or now - self.last > 0.2:
            rate = (step - self.s0) / (now - self.t0) if now > self.t0 else 0.0
            self.bar.update(self.task, completed=step, rate=f"{rate:.1f}", **fields)
            self.last = now

    def _plain(self, step: int, row: dict | None) -> None:
        if row is not None and (step % (10 * max(1, self.total // 100)) == 0 or step == 0):
            click.echo(
                f"step {step:>7}  train acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f}  "
                f"train loss {row['train_loss']:.3g}  test loss {row['test_loss']:.3g}",
                err=True,
            )

    def __exit__(self, *exc) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.stop()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="groklab", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.ClickException as err:
        click.echo(f"groklab: error: {err.format_message()} (see groklab --help)", err=True)
        sys.exit(EXIT_USAGE)
    except UserError as err:
        click.echo(f"groklab: error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("groklab: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
