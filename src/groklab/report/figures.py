"""What a report shows: figures described as plain data, built from runs on disk.

A `Figure` is a row of `Panel`s (lines, bars, a heatmap or a slider across checkpoints); the HTML
renderer (plotly) and the static one (matplotlib) draw the same descriptions, so a figure is
defined once. Each builder returns only the figures the run has data for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from groklab.dynamics.slingshots import last_layer_column
from groklab.dynamics.summary import is_structural, structural_headline
from groklab.measures import component_norms, fourier_basis, frequency_fve, frequency_norms
from groklab.store import Run

PHASE_COLORS = {
    "memorization": "#f4d4a8",
    "circuit formation": "#c9dcf0",
    "cleanup": "#cdeac0",
    "until generalization": "#e3daf0",
}  # the last: a run's stages where it has no modular phases
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MAX_SNAPSHOTS = 100  # checkpoints drawn in the step x frequency heatmap and the slider


@dataclass
class Trace:
    name: str
    x: Sequence
    y: Sequence
    kind: str = "line"  # line | bar | markers
    dash: bool = False
    color: str | None = None
    width: float = 1.8
    opacity: float = 1.0
    legend: bool = True  # listed in the legend (one entry per name)
    error: tuple[Sequence, Sequence] | None = None  # (low, high) around each y: an interval drawn as error bars
    column: str | None = None  # the metrics column drawn, if one is (other_figures draws the rest)


@dataclass
class Panel:
    title: str
    traces: list[Trace] = field(default_factory=list)
    xlabel: str = "step"
    ylabel: str = ""
    logy: bool = False
    bands: list[tuple[float, float, str]] = field(default_factory=list)  # shaded x ranges (phases)
    heatmap: dict | None = None  # {"z": (rows, cols), "x": cols, "y": rows, "colorbar": title}
    frames: dict | None = None  # {"x": bins, "steps": [...], "y": (steps, bins)}: a slider over steps
    grouped: bool = False  # bar traces side by side at each x (else drawn over each other)


def bar_slots(panel: Panel, trace: Trace, x: Sequence) -> tuple[np.ndarray, float]:
    """Where a bar trace's bars go and how wide: x positions (categories at 0, 1, ...; numbers as they are)
    and the width, shifted side by side when the panel is `grouped` (both renderers draw the same)."""
    numeric = len(x) and not isinstance(list(x)[0], str)
    pos = np.asarray(x, dtype=float) if numeric else np.arange(len(x), dtype=float)
    unique = np.unique(pos)
    step = float(np.diff(unique).min()) if numeric and len(unique) > 1 else 1.0
    bars = [t for t in panel.traces if t.kind == "bar"]
    if not panel.grouped or len(bars) < 2:
        return pos, 0.8 * step
    width = 0.8 * step / len(bars)
    slot = next(i for i, bar in enumerate(bars) if bar is trace)
    return pos - 0.4 * step + (slot + 0.5) * width, width


@dataclass
class Figure:
    key: str  # file stem of its PNG/SVG and id in the page
    title: str
    caption: str
    panels: list[Panel]


def phase_bands(summary: dict, last_step: int = 0) -> list[tuple[float, float, str]]:
    """Shaded x ranges for the phases found in the run's summary (modular arithmetic: memorization, circuit
    formation, cleanup), or else for its stages (any task: memorization, until generalization, cleanup)."""
    if summary.get("memorization_end") is not None:
        ends = [summary.get(k) for k in ("memorization_end", "circuit_formation_end", "cleanup_end")]
        names = ("memorization", "circuit formation", "cleanup")
    else:
        ends = [summary.get(k) for k in ("memorized_step", "generalized_step", "cleanup_end_step")]
        names = ("memorization", "until generalization", "cleanup")
    bands, start = [], 0
    for name, end in zip(names, ends):
        if end is None:
            break
        bands.append((start, end, name))
        start = end
    return bands


def curve_figures(runs: list[Run]) -> list[Figure]:
    """Loss (log scale) and accuracy, train and test; one run's phases shaded, several runs overlaid."""
    single = len(runs) == 1
    loss, acc = Panel("loss", ylabel="cross-entropy", logy=True), Panel("accuracy", ylabel="accuracy")
    for i, run in enumerate(runs):
        m = run.metrics
        label, color = (
            ("", None) if single else (f"{run_label(run)}: ", PALETTE[i % len(PALETTE)])
        )  # one colour per run
        for split, dash in (("train", False), ("test", True), ("text", True)):  # text: an imported run's --eval-text
            for panel, column in ((loss, f"{split}_loss"), (acc, f"{split}_acc")):
                if column in m:  # an imported run may have neither accuracy nor some losses
                    panel.traces.append(
                        Trace(f"{label}{split}", m["step"], m[column], dash=dash, color=color, column=column)
                    )
    panels = [panel for panel in (loss, acc) if panel.traces]
    if not panels:
        return []
    if single:
        loss.bands = acc.bands = phase_bands(runs[0].summary, int(runs[0].metrics["step"].iloc[-1]))
    caption = "Train (solid) and test (dashed) loss and accuracy at every evaluation." + (
        " Shaded: the phases found in the metrics (memorization, circuit formation, cleanup)." if single else ""
    )
    return [Figure("curves", "Loss and accuracy", caption, panels)]


WEIGHT_STAT_PANELS = [  # Hu et al. 2023's 14 statistics (measures.weight_stats), four panels
    ("norms", "", True, [("l1", "l1", False), ("l2", "l2", False), ("spectral", "spectral", False)]),
    (
        "trace and sparsity",
        "",
        False,
        [
            ("trace", "trace", False),
            ("code_sparsity", "code sparsity (l1 / l2)", True),
            ("computational_sparsity", "computational sparsity", True),
        ],
    ),
    (
        "singular values",
        "",
        False,
        [("mean_lambda", "mean", False), ("variance_lambda", "variance", True)],
    ),
    (
        "weights and biases",
        "",
        False,
        [
            ("mean_w", "mean w", False),
            ("median_w", "median w", False),
            ("var_w", "var w", False),
            ("mean_b", "mean b", True),
            ("median_b", "median b", True),
            ("var_b", "var b", True),
        ],
    ),
]


def weight_stats_figures(runs: list[Run]) -> list[Figure]:
    """The 14 weight statistics of Hu et al. 2023 (the training map's features), where the metrics have them."""
    panels = [_column_panel(runs, *spec) for spec in WEIGHT_STAT_PANELS]
    panels = [p for p in panels if p.traces]
    if not panels:
        return []
    caption = (
        "The per-checkpoint weight statistics of Hu et al. 2023 that the training map (groklab map) is fitted on: "
        "matrix norms, trace, sparsities and singular values averaged over the included matrices, and the "
        "distribution of all included weights and biases (measures.weight_stats)."
    )
    return [Figure("weight_stats", "Weight statistics (Hu et al. 2023)", caption, panels)]


MEASURE_PANELS = [
    (
        "restricted and excluded loss",
        "cross-entropy",
        True,
        [
            ("restricted_loss", "restricted (logits)", False),
            ("excluded_loss", "excluded (logits)", False),
            ("restricted_loss_mlp", "restricted (neurons)", True),
            ("excluded_loss_mlp", "excluded (neurons)", True),
            ("train_loss", "train loss", True),
            ("test_loss", "test loss", True),
        ],
    ),
    ("Gini coefficient of Fourier norms", "Gini", False, [("gini_W_E", "W_E", False), ("gini_W_L", "W_L", False)]),
    ("sum of squared weights", "sum of squares", False, [("sum_sq_weights", "all weights", False)]),
]


def _column_panel(
    runs: list[Run],
    title: str,
    ylabel: str,
    logy: bool,
    columns: list[tuple[str, str, bool]],
    skip_overlaid: tuple[str, ...] = (),
) -> Panel:
    """A panel of metric columns (column, trace name, dashed) where the runs have them: one run's in
    the default colours, several runs' one colour per run (without the `skip_overlaid` columns)."""
    single = len(runs) == 1
    panel = Panel(title, ylabel=ylabel, logy=logy)
    for i, run in enumerate(runs):
        m = run.metrics
        for column, name, dash in columns:
            if column in m and m[column].notna().any() and (single or column not in skip_overlaid):
                rows = m.dropna(subset=[column])
                panel.traces.append(
                    Trace(
                        name if single else f"{run_label(run)}: {name}",
                        rows["step"],
                        rows[column],
                        dash=dash,
                        color=None if single else PALETTE[i % len(PALETTE)],
                        column=column,
                    )
                )
    return panel


def measure_figures(runs: list[Run]) -> list[Figure]:
    """Nanda et al.'s progress measures over training, where the metrics have them."""
    single = len(runs) == 1
    panels = [_column_panel(runs, *spec, skip_overlaid=("train_loss", "test_loss")) for spec in MEASURE_PANELS]
    panels = [p for p in panels if p.traces]
    for panel in panels:
        panel.bands = phase_bands(runs[0].summary, 0) if single else []
    if not panels:
        return []
    freqs = runs[0].metrics.get("key_freqs")
    used = (
        f" Key frequencies used: {freqs.dropna().iloc[-1]}."
        if single and freqs is not None and freqs.notna().any()
        else ""
    )
    caption = (
        "Restricted loss keeps only the key frequencies' cos/sin(w(a+b)) directions; excluded loss removes them "
        "(on the training pairs), at the logits and at the MLP neurons. The Gini coefficients of the Fourier-"
        "component norms of W_E and W_L measure how sparse the embedding and the neuron-logit map are in the "
        "Fourier basis." + used
    )
    return [Figure("measures", "Progress measures (Nanda et al. 2023)", caption, panels)]


def stability_figures(runs: list[Run]) -> list[Figure]:
    """Softmax collapse (Prieto et al. 2025) and the last layer's weight norm with its slingshots (Thilak
    et al. 2022), where the metrics have them."""
    panels = [
        _column_panel(
            runs,
            "softmax collapse (training examples)",
            "share of examples",
            False,
            [
                ("softmax_collapse", "softmax collapse, float32", False),
                ("zero_terms", "loss exactly 0, float32", True),
                ("softmax_collapse_f64", "softmax collapse, float64", False),
                ("zero_terms_f64", "loss exactly 0, float64", True),
            ],
        )
    ]
    norm = Panel("last layer's weight norm", ylabel="L2 norm")
    for i, run in enumerate(runs):
        m, column = run.metrics, last_layer_column(list(run.metrics.columns))
        if column is None or not m[column].notna().any():
            continue
        rows = m.dropna(subset=[column])
        color, label = (None, "") if len(runs) == 1 else (PALETTE[i % len(PALETTE)], f"{run_label(run)}: ")
        norm.traces.append(
            Trace(f"{label}{column[len('sum_sq_') :]}", rows["step"], np.sqrt(rows[column]), color=color, column=column)
        )
        starts = run.summary.get("slingshot_steps") or []
        at = rows.set_index("step")[column]
        if starts:
            norm.traces.append(
                Trace(
                    f"{label}slingshot",
                    starts,
                    [float(np.sqrt(at.get(s, np.nan))) for s in starts],
                    kind="markers",
                    color=color or "#d62728",
                )
            )
    collapse = any("softmax_collapse" in run.metrics for run in runs)
    slingshots = any(run.summary.get("slingshots") for run in runs)
    panels = [p for p in (*panels, norm) if p.traces]
    if not panels or not (collapse or slingshots):  # a plain run's weight norm is drawn with the progress measures
        return []
    caption = (
        "Softmax collapse: the share of training examples whose softmax denominator is exactly 1 in the float "
        "type (their loss is then exactly 0 and their gradient vanishes; Prieto et al. 2025). Last layer's "
        "weight norm, with the slingshots found on it (markers: bursts of norm growth that end in a plateau; "
        "Thilak et al. 2022)."
    )
    return [Figure("stability", "Numerical stability and slingshots", caption, panels)]


STRUCTURAL_PANELS = [
    (
        "tree-structuredness",
        "score",
        False,
        [
            ("t_score", "t-score", False),
            ("parseval", "PARSEVAL F1 vs gold", False),
            ("parseval_right_branching", "PARSEVAL F1, right-branching", True),
        ],
    ),
    (
        "weight norm",
        "L2 norm",
        False,
        [("weight_norm", "all weights", False), ("weight_norm_per_layer", "per layer", True)],
    ),
    ("attention entropy", "nats", False, [("attention_entropy", "mean over heads and positions", False)]),
]


def structural_figures(runs: list[Run]) -> list[Figure]:
    """Structural grokking (Murty et al. 2023): each task metric on the in-distribution (solid) and
    generalization (dashed) sets, and the tree-projection, weight-norm and attention measures."""
    metrics = sorted(
        {
            c[len("gen_") :]
            for run in runs
            for c in run.metrics.columns  # gen_X with an id_X
            if c.startswith("gen_") and f"id_{c[len('gen_') :]}" in run.metrics
        }
    )
    panels = [
        _column_panel(
            runs,
            metric.replace("_", " "),
            "accuracy",
            False,
            [(f"id_{metric}", "id", False), (f"gen_{metric}", "gen", True)],
        )
        for metric in metrics
    ]
    panels += [p for p in (_column_panel(runs, *spec) for spec in STRUCTURAL_PANELS) if p.traces]
    if not panels:
        return []
    if len(runs) == 1:
        for panel in panels:
            panel.bands = phase_bands(runs[0].summary)
    caption = (
        "Each task metric on the in-distribution set (solid) and the generalization set (dashed), whose items "
        "only the hierarchical rule explains: structural grokking is the dashed curve rising long after the "
        "solid one saturates (one run: its stages shaded). Tree-structuredness: t-score (higher: more tree-like) and PARSEVAL F1 of the "
        "induced trees against gold parses, beside the right-branching baseline."
    )
    return [Figure("structural", "Structural grokking (Murty et al. 2023)", caption, panels)]


def source_figures(run: Run) -> list[Figure]:
    """An imported run's own loss curves, as the file recorded them (RUN_DIR/source.json), beside groklab's
    evaluation of its checkpoints: the two computations side by side (e.g. Nanda et al.'s loss over all
    outputs, '=' included, against groklab's over the answer classes)."""
    source = run.dir.read_source()
    curves = {k: v for k, v in (source.get("curves") or {}).items() if v}
    if not curves:
        return []
    panel, m = Panel("loss", ylabel="cross-entropy", logy=True), run.metrics
    for i, (name, curve) in enumerate(sorted(curves.items())):
        steps = sorted(curve, key=int)
        color = PALETTE[i % len(PALETTE)]
        panel.traces.append(
            Trace(f"{name}, the file's", [int(k) for k in steps], [curve[k] for k in steps], color=color)
        )
        if name in m and m[name].notna().any():
            rows = m.dropna(subset=[name])
            panel.traces.append(Trace(f"{name}, groklab's", rows["step"], rows[name], "markers", color=color))
    caption = (
        f"The loss curves stored in the imported file ({source.get('format', 'foreign')} format; lines) and "
        "groklab's evaluation of the imported checkpoints (markers). The file's: "
        + str(source.get("curves_note") or "computed by the code that wrote it")
        + "."
    )
    return [Figure("source_curves", "The imported file's own curves", caption, [panel])]


NOT_DRAWN = ("step", "elapsed_s", "key_freqs")  # bookkeeping; key_freqs is a list, stated in a caption


def other_figures(run: Run, drawn: set[str], per_row: int = 3) -> list[Figure]:
    """Every numeric metrics column no other figure draws — a plugin's measure set, the per-matrix norms, the
    further variants of the built-in measures — one panel per name prefix (the text before the first "_"),
    `per_row` panels a figure: nothing the run logged is left out of its report."""
    m = run.metrics
    columns = [
        c
        for c in m.columns
        if c not in drawn and c not in NOT_DRAWN and m[c].dtype.kind in "fiub" and m[c].notna().any()
    ]
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(column.split("_")[0], []).append(column)
    panels = [
        _column_panel([run], names[0] if len(names) == 1 else f"{prefix}_*", "", False, [(c, c, False) for c in names])
        for prefix, names in groups.items()
    ]
    chunks = [panels[i : i + per_row] for i in range(0, len(panels), per_row)]
    caption = (
        "The other numeric columns of the run's metrics table (metrics.jsonl), grouped by name: a plugin's "
        "measure sets, per-matrix norms, variants of the measures drawn above."
    )
    return [
        Figure(
            f"other_{i}",
            "Other logged columns" + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""),
            caption,
            chunk,
        )
        for i, chunk in enumerate(chunks)
    ]


def fourier_figures(run: Run) -> list[Figure]:
    """The Fourier picture of a modular-addition run: how the embedding's spectrum sharpens over
    training, which frequencies the neurons use, how the heads attend."""
    if not run.steps:  # no weights (e.g. an imported run): nothing to draw, and no task to build
        return []
    task = run.task
    p = task.params.get("p")
    if task.name != "add" or not task.vocab or not p or p % 2 == 0 or not run.steps:
        return []
    basis = fourier_basis(p)
    freqs = np.arange(1, (p - 1) // 2 + 1)
    steps = run.steps
    shown = [steps[i] for i in np.unique(np.linspace(0, len(steps) - 1, min(MAX_SNAPSHOTS, len(steps))).astype(int))]
    spectra = np.stack(
        [
            frequency_norms(component_norms(run.checkpoint(s, ["embed.W_E"])["embed.W_E"][:p].double(), basis)).numpy()
            for s in shown
        ]
    )  # (snapshots, frequencies)
    key = _key_freqs(run)
    figures = [
        Figure(
            "embedding_spectrum",
            "Embedding in the Fourier basis",
            "Norm of each frequency's cos and sin components of W_E, at every checkpoint (left) and at the last "
            f"one (right; key frequencies {', '.join(map(str, key)) or 'none found'} in orange). A circuit that "
            "uses a few frequencies leaves a few bright rows.",
            [
                Panel(
                    "W_E frequency norms over training",
                    xlabel="step",
                    ylabel="frequency",
                    heatmap={"z": spectra.T, "x": shown, "y": freqs, "colorbar": "norm"},
                ),
                Panel(
                    f"W_E at step {shown[-1]}",
                    xlabel="frequency",
                    ylabel="norm",
                    traces=[
                        Trace("norm", freqs, spectra[-1], kind="bar", color=None),
                        *(
                            [Trace("key frequencies", key, spectra[-1][np.array(key) - 1], kind="bar", color="#ff7f0e")]
                            if key
                            else []
                        ),
                    ],
                ),
            ],
        ),
        Figure(
            "spectrum_slider",
            "How the circuit forms",
            "The embedding's frequency norms at each checkpoint: drag the slider (or press play) to watch the "
            "spectrum go from noise to a few key frequencies.",
            [
                Panel(
                    "W_E frequency norms",
                    xlabel="frequency",
                    ylabel="norm",
                    frames={"x": freqs, "steps": shown, "y": spectra},
                )
            ],
        ),
    ]
    model = run.model()
    figures.append(_neuron_figure(run, model, basis, key))
    figures.append(_attention_figure(model, p))
    return figures


def _key_freqs(run: Run) -> list[int]:
    m = run.metrics
    if "key_freqs" in m and m["key_freqs"].notna().any():
        text = str(m["key_freqs"].dropna().iloc[-1])
        return [int(k) for k in text.split(",") if k]
    return []


@torch.no_grad()
def _neuron_figure(run: Run, model, basis, key: list[int]) -> Figure:
    p = basis.shape[0]
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    last = f"blocks.{len(model.blocks) - 1}"
    _, cache = model.run_with_cache(
        torch.stack([a, b, torch.full_like(a, p)], 1), at=-1, names=[f"{last}.mlp.hook_post"]
    )
    fve = frequency_fve(cache[f"{last}.mlp.hook_post"][:, -1], basis)  # (neurons, frequencies)
    best_fve, best = fve.max(1)
    explained = best_fve > 0.85
    counts = torch.bincount(best[explained], minlength=fve.shape[1]).numpy()
    shown = [k for k in range(1, fve.shape[1] + 1) if counts[k - 1] > 0]
    hist, edges = np.histogram(best_fve.numpy(), bins=20, range=(0, 1))
    return Figure(
        "neurons",
        "Neurons by frequency",
        f"Left: MLP neurons whose activations have > 85% of their variance explained by one frequency, by that "
        f"frequency ({int(explained.sum())} of {len(best)} neurons; key frequencies {', '.join(map(str, key)) or 'none'}). "
        "Right: histogram of each neuron's largest fraction of variance explained by a single frequency.",
        [
            Panel(
                "neurons per frequency",
                xlabel="frequency",
                ylabel="neurons",
                traces=[
                    Trace(
                        "neurons",
                        [str(k) for k in shown],
                        counts[np.array(shown, dtype=int) - 1] if shown else [],
                        kind="bar",
                    )
                ],
            ),
            Panel(
                "variance explained by the best frequency",
                xlabel="fraction of variance",
                ylabel="neurons",
                traces=[Trace("neurons", (edges[:-1] + edges[1:]) / 2, hist, kind="bar")],
            ),
        ],
    )


@torch.no_grad()
def _attention_figure(model, p: int) -> Figure:
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    _, cache = model.run_with_cache(torch.stack([a, b, torch.full_like(a, p)], 1), names=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"][:, :, -1, 0]  # (p*p, head): from `=` to a
    panels = [
        Panel(
            f"head {h}",
            xlabel="b",
            ylabel="a",
            heatmap={
                "z": pattern[:, h].reshape(p, p).numpy(),
                "x": np.arange(p),
                "y": np.arange(p),
                "colorbar": "attention",
                "zrange": (0.0, 1.0),
            },
        )
        for h in range(pattern.shape[1])
    ]
    return Figure(
        "attention",
        "Attention from = to a, per head",
        "Attention weight from the `=` position to the first operand a, for every input (a, b). Heads that "
        "attend by a periodic function of a and b show stripes.",
        panels,
    )


def run_label(run: Run) -> str:
    return run.path.name


def header(run: Run) -> dict:
    """What the report's header says: task, model, optimizer, source, verdict, phases, status."""
    cfg, summary, m = run.config, run.summary, run.metrics
    model = cfg.model.params()
    train = cfg.train
    task = ", ".join(f"{k}={v}" for k, v in cfg.task.params().items())
    status = run.status
    banner = None
    if status == "diverged" or (summary.get("last_good_step") not in (None, summary.get("last_step"))):
        banner = (
            f"This run diverged: the losses became non-finite; the last good step is {summary.get('last_good_step')}."
        )
    elif status == "killed":
        banner = "This run stopped without finishing (killed?); `groklab run --resume` continues it."
    elif status == "interrupted":
        banner = f"This run was interrupted at step {summary.get('step')}; `groklab run --resume` continues it."
    elif status == "running":
        banner = f"This run is in progress (step {int(m['step'].iloc[-1])} of {train.max_steps}); the report shows it so far."
    imported = summary.get("imported")
    if imported:  # foreign checkpoints (groklab import): what they are, no training settings or phases
        return _imported_header(run, imported)
    grok = summary.get("step_test_acc_99")
    structural = structural_headline(summary) if is_structural(summary) else []
    if structural:  # an LM scored on in-distribution / generalization sets: their metrics, no phases
        verdict = "; ".join(f"{k}: {v}" for k, v in structural if k.startswith("gen_"))
    else:
        verdict = (
            f"grokked: test accuracy reached 99% at step {grok}"
            + (
                f" ({summary['elapsed_s_test_acc_99']:.0f} s)"
                if summary.get("elapsed_s_test_acc_99") is not None
                else ""
            )
            if grok is not None
            else f"did not grok: best test accuracy {m['test_acc'].max():.3f}"
            if "test_acc" in m
            else "no test accuracy recorded"
        )
    phases = [
        (name, summary.get(f"{key}_end"))
        for name, key in (
            ("memorization", "memorization"),
            ("circuit formation", "circuit_formation"),
            ("cleanup", "cleanup"),
        )
    ]
    return {
        "title": f"{cfg.name} (seed {cfg.seed})",
        "status": status,
        "banner": banner,
        "verdict": verdict,
        "rows": [
            ("task", f"{cfg.task.name} ({task})"),
            (
                "model",
                ", ".join(
                    f"{k} {model[k]}"
                    for k in ("arch", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act", "normalization")
                    if k in model
                ),
            ),
            (
                "optimizer",
                f"AdamW lr {train.lr:g}, weight decay {train.weight_decay:g}, betas {tuple(train.betas)}, "
                f"warmup {train.warmup_steps} steps, batch {train.batch_size}, {train.loss_dtype} loss",
            ),
            ("source", cfg.source or "(no preset source)"),
            ("expected", cfg.expected or "(not stated)"),
            (
                "steps",
                f"{int(m['step'].iloc[-1])} of {train.max_steps}, {summary.get('elapsed_s', float('nan')):.0f} s "
                f"({summary.get('steps_per_s')} steps/s)",
            ),
        ]
        + (
            structural
            or [
                ("train acc >= 99%", f"step {summary.get('step_train_acc_99')}"),
                (
                    "phases",
                    ", ".join(f"{n} ends at step {s}" if s is not None else f"no {n}" for n, s in phases)
                    + (f" ({summary['phase_note']})" if summary.get("phase_note") else ""),
                ),
            ]
        )
        + _stages(summary),
    }


def _imported_header(run: Run, imported: dict) -> dict:
    """The header of an imported run: its source and model, its checkpoints and last losses."""
    cfg, m = run.config, run.metrics
    model = cfg.model.params()
    finals = {k: m[k].dropna() for k in ("train_loss", "test_loss", "test_acc", "text_loss") if k in m}
    finals = ", ".join(f"{k} {v.iloc[-1]:.4g}" for k, v in finals.items() if len(v))
    return {
        "title": f"{cfg.name} (seed {cfg.seed})",
        "status": run.status,
        "banner": None,
        "verdict": f"imported {imported.get('model_type')} checkpoints" + (f": final {finals}" if finals else ""),
        "rows": [
            ("source", cfg.source),
            (
                "model",
                ", ".join(
                    f"{k} {model[k]}"
                    for k in ("architectures", "n_layers", "d_model", "n_heads", "d_mlp")
                    if k in model
                ),
            ),
            ("checkpoints", f"{len(m)}, steps {int(m['step'].min())} to {int(m['step'].max())}"),
        ],
    }


def _stages(summary: dict) -> list[tuple[str, str]]:
    """The stages every run has (dynamics.detect_stages), as the header's row."""
    names = (
        ("memorized", "memorized_step"),
        ("structure moves", "structure_onset_step"),
        ("LLC moves", "llc_onset_step"),
        ("generalized", "generalized_step"),
        ("cleanup ends", "cleanup_end_step"),
    )
    found = sorted((summary[key], name) for name, key in names if summary.get(key) is not None)
    if "stages_columns" not in summary:
        return []
    text = ", ".join(f"{name} at step {step}" for step, name in found) or "none found"
    return [
        (
            "stages",
            text
            + (f" ({summary['stages_note']})" if summary.get("stages_note") else "")
            + f" [{summary['stages_columns']}]",
        )
    ]
