"""The measure sets a run can compute live or post hoc, by name. A measure set, built-in or a plugin's
(`groklab.config.plugins`), registers itself here with `register_measure`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from groklab.config import MeasuresConfig
from groklab.config.plugins import claim
from groklab.errors import ConfigError
from groklab.measures.llc import EPSILONS, estimate_llc
from groklab.measures.lm import attention_entropy, weight_norm
from groklab.measures.progress import check_modular_addition, model_key_frequencies, progress_measures
from groklab.measures.stability import check_stability, stability
from groklab.measures.structure import check_structure, structure
from groklab.measures.tree_projection import TASKS as TREE_TASKS
from groklab.measures.tree_projection import analysis_sample, tree_projection
from groklab.measures.weight_stats import weight_statistics
from groklab.measures.weights import weight_norms


@dataclass(frozen=True)
class MeasureSet:
    check: Callable  # task -> None, or a ConfigError saying why the set does not apply
    compute: Callable  # (model, task, cfg, key_freqs) -> columns
    fn: Callable  # the registered function (compute calls it with the arguments it takes)


MEASURES: dict[str, MeasureSet] = {}
OPTIONAL = ("cfg", "key_freqs")  # what a measure function may also take, by these names


def register_measure(name: str, check: Callable | None = None):
    """Register the measure set `name`: `@register_measure("name", check=...)` on
    `compute(model, task) -> {column: number}`, which may also take `cfg` (the run's MeasuresConfig) and
    `key_freqs` (the Fourier key frequencies: a list, or "each") by those names. `check(task)` raises a
    ConfigError saying why the set does not apply to a task (checked before a run starts; default: it
    applies to every task). A name another module registered is refused (ConfigError)."""
    if check is not None and not callable(check):
        raise ConfigError(f"measure set '{name}': check must be a function task -> None, got {check!r}")

    def decorate(compute):
        if not callable(compute):
            raise ConfigError(
                f"measure set '{name}': register_measure decorates compute(model, task) -> dict, got {compute!r}"
            )
        takes = _arguments(name, compute)
        old = MEASURES.get(name)
        claim("measure set", name, compute, old.fn if old else None)
        MEASURES[name] = MeasureSet(
            check or _applies,
            lambda model, task, cfg, key_freqs: compute(
                model, task, **{k: v for k, v in (("cfg", cfg), ("key_freqs", key_freqs)) if k in takes}
            ),
            compute,
        )
        return compute

    return decorate


def _applies(task) -> None:
    return None


def _arguments(name: str, compute: Callable) -> set[str]:
    """The optional arguments `compute` takes; a ConfigError if a measure cannot be called so."""
    try:
        params = list(inspect.signature(compute).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): called with (model, task)
        return set()
    kinds = {p.kind for p in params}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        listed = ", ".join(p.name for p in params)
        raise ConfigError(f"measure set '{name}': compute must take (model, task), it takes ({listed})")
    rest = [p for p in params[2:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [p.name for p in rest if p.name not in OPTIONAL and p.default is p.empty]
    if unknown:
        raise ConfigError(
            f"measure set '{name}': compute takes '{unknown[0]}', which a measure is not given; "
            f"it takes (model, task) and optionally {' and '.join(OPTIONAL)}"
        )
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return set(OPTIONAL)
    return {p.name for p in rest if p.name in OPTIONAL}


ANALYSIS_SAMPLE = 500  # training sequences whose attention is measured (spec §5.3: 500 Dyck strings)


def _check_lm(task) -> None:
    if task.loss != "lm":
        raise ConfigError(
            f"config: measure set 'lm' needs a language-model task (dyck, question_formation, "
            f"tense_inflection); task '{task.name}' is not one"
        )


def _lm_measures(model, task) -> dict:
    """Weight norm (total and per layer) and attention entropy of the real forward pass, on the first
    ANALYSIS_SAMPLE training sequences (a fixed sample for every checkpoint; spec §6 #18)."""
    labels = task.train.labels[:ANALYSIS_SAMPLE]
    lengths = (labels != -100).sum(1)  # [SOS] w1..wn: as many inputs as targets
    return {**weight_norm(model), **attention_entropy(model, task.train.inputs[:ANALYSIS_SAMPLE], lengths)}


TREE_SAMPLE = 200  # training sentences of the tree projections (spec §5.4 scores 10,000 / 500 Dyck; §6 #18)


def _check_tree_projection(task) -> None:
    if task.loss != "lm" or task.name not in TREE_TASKS:
        raise ConfigError(
            f"config: measure set 'tree_projection' needs a structural LM task "
            f"({', '.join(TREE_TASKS)}); task '{task.name}' is not one"
        )


def _tree_projection(model, task) -> dict:
    """t_score, parseval, ... (measures.tree_projection) on the first TREE_SAMPLE training sentences (QF:
    quest lines' declaratives; tense: sources; Dyck: strings < 200 tokens), greedy trees, seed 0."""
    sentences, gold = analysis_sample(task, TREE_SAMPLE)
    return tree_projection(model, sentences, gold, seed=0)


LLC_EXAMPLES = 4096  # training examples the LLC's chains draw their minibatches from (all when fewer)


def _llc(model, task, cfg: MeasuresConfig) -> dict:
    """The local learning coefficient (measures.llc) under the task's own training loss, on its first
    LLC_EXAMPLES training examples (a fixed sample for every checkpoint), cfg.llc_chains x (cfg.llc_burnin +
    cfg.llc_draws) SGLD steps on minibatches of cfg.llc_batch, the chains kept in the basin: below half-way
    to the loss of the model's zero output (chance: log of the classes for cross-entropy, 1 for the hinge).
    cfg.llc_epsilon "each": calibrated at each checkpoint, the step size and, where no step size keeps the
    chains in the basin at (cfg.llc_nbeta, cfg.llc_gamma), the inverse temperature and localization
    (`llc.ladder`); a fixed step size fixes all three (values comparable across checkpoints; NaN where
    the chains leave the basin)."""
    inputs, labels = task.train.inputs[:LLC_EXAMPLES], task.train.labels[:LLC_EXAMPLES]
    calibrate = cfg.llc_epsilon == "each"
    loss = lambda net, x, y: task.objective(task.outputs(net, x), y, torch.float32)  # noqa: E731
    was_training = model.training
    with torch.no_grad():  # in eval mode: no dropout, no draw from the random state
        chance = float(task.objective(torch.zeros_like(task.outputs(model.eval(), inputs)), labels, torch.float32))
    model.train(was_training)
    return estimate_llc(
        model,
        inputs,
        labels,
        loss,
        epsilons=EPSILONS if calibrate else (cfg.llc_epsilon,),
        escalate=calibrate,
        chains=cfg.llc_chains,
        draws=cfg.llc_draws,
        burnin=cfg.llc_burnin,
        batch_size=cfg.llc_batch,
        nbeta=cfg.llc_nbeta,
        gamma=cfg.llc_gamma,
        ceiling=chance,
    )


def _weights(model, task) -> dict:
    return weight_norms(model)


def _weight_stats(model, task) -> dict:
    return weight_statistics(model)


def _fourier(model, task, cfg: MeasuresConfig, key_freqs) -> dict:
    return progress_measures(
        model, task, key_freqs, cfg.key_method, cfg.min_fve, cfg.min_share, cfg.rel_threshold, cfg.per_frequency
    )


# the built-in measure sets, registered as a plugin's are
register_measure("llc")(_llc)
register_measure("structure", check_structure)(structure)
register_measure("lm", _check_lm)(_lm_measures)
register_measure("tree_projection", _check_tree_projection)(_tree_projection)
register_measure("weights")(_weights)
register_measure("stability", check_stability)(stability)
register_measure("weight_stats")(_weight_stats)
register_measure("fourier", check_modular_addition)(_fourier)


def check_measures(cfg: MeasuresConfig, task) -> None:
    for name in cfg.names:
        if name not in MEASURES:
            raise ConfigError(
                f"config: unknown measure set '{name}' in measures.names; known: {', '.join(MEASURES)}; "
                "a measure set of your own comes from a plugin (docs/extending.md)"
            )
        MEASURES[name].check(task)


def make_measures(cfg: MeasuresConfig, task, key_freqs: Sequence[int] | None = None) -> Callable:
    """model -> every column of the configured measure sets. Key frequencies: `key_freqs` if given,
    else the config's list, else found in each model measured."""
    check_measures(cfg, task)
    freqs = key_freqs if key_freqs is not None else cfg.key_freqs if isinstance(cfg.key_freqs, tuple) else "each"

    def measure(model) -> dict:
        row = {}
        for name in cfg.names:
            row.update(MEASURES[name].compute(model, task, cfg, freqs))
        return row

    return measure


def final_key_frequencies(cfg: MeasuresConfig, model, task) -> list[int]:
    return model_key_frequencies(model, task, cfg.key_method, cfg.min_fve, cfg.min_share, cfg.rel_threshold)
