"""Runs trained elsewhere, made groklab runs: `groklab import nanda|transformer-lens PATH --out RUN_DIR`.

An importer (`groklab.store.importers`, the only code that knows the foreign layouts) reads the file into
groklab's weight names and infers a config; here the user's `--set` overrides are applied, the config is
validated like any run's, the weights are checked against the model it builds, every checkpoint is evaluated
with groklab's own evaluation (train / test loss and accuracy on the config's split, float64, answer classes
only: the standard metrics columns), and the run directory is written whole or not at all. Its summary's
status is "imported"; `groklab measure` and `groklab report` treat it as any run. The file's own loss curves,
computed its way, are kept verbatim in RUN_DIR/source.json (`Run(path).dir.read_source()`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from groklab.config import apply_overrides, config_from_dict, to_yaml
from groklab.errors import ConfigError, RunDirError
from groklab.experiment import Prepared, resolve, write_summary
from groklab.models import build_model
from groklab.store import Run, RunDir
from groklab.store.importers import staged
from groklab.store.importers.foreign import ForeignRun
from groklab.store.importers.nanda import read_nanda
from groklab.store.importers.transformer_lens import read_transformer_lens
from groklab.training import TrainState
from groklab.training.loop import evaluate

FORMATS: dict[str, Callable[..., ForeignRun]] = {
    "nanda": read_nanda,  # (path, task=None)
    "transformer-lens": read_transformer_lens,  # (path, task=None, config_path=None)
}
SPLITS = ("nanda", "random", "torch")


@dataclass(frozen=True)
class Imported:
    run: Run
    config_yaml: str  # the config as written to RUN_DIR/config.yaml
    notes: list[str]  # where each inferred value came from
    steps: list[int]  # the checkpoints imported
    source: dict  # what RUN_DIR/source.json holds


def import_run(
    fmt: str,
    path: str | Path,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    task: str | None = None,
    config: str | Path | None = None,
    device: str | None = None,
) -> Imported:
    """Import the checkpoint(s) at `path`, in format `fmt` (see FORMATS), into the new run directory `out`.
    `overrides`: `key.path=value` settings applied to the inferred config; `task`: the groklab task the model
    was trained on (when the file cannot say); `config`: a TransformerLens config JSON for a bare state dict;
    `device`: where the checkpoints are evaluated (default cpu). UserError (one line) for anything the user
    can fix; then nothing is written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format '{fmt}'; known: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out} already exists; an import never touches an existing directory: choose another --out")
    extra = {"config_path": config} if fmt == "transformer-lens" else {}
    if config is not None and fmt != "transformer-lens":
        raise ConfigError("--config is for transformer-lens imports (a bare state dict's config)")
    foreign = FORMATS[fmt](path, task=task, **extra)
    notes = list(foreign.notes)
    prepared = resolve(config_from_dict(apply_overrides(foreign.config, overrides)), device or "cpu")
    prepared = _match_split(prepared, foreign, overrides, notes)
    if overrides:
        notes.append("--set: " + ", ".join(overrides))
    model = build_model(prepared.model, prepared.config.resolved_model_seed).to(prepared.device)
    expected = model.state_dict()
    weights = {step: _fit(foreign, step, expected, notes) for step in sorted(foreign.checkpoints)}
    rows = []
    task_ = prepared.task.to(prepared.device)
    for step, state in weights.items():
        model.load_state_dict(state)
        with torch.no_grad():
            rows.append({"step": step, **evaluate(model, task_)})
    source = {
        "format": fmt,
        "path": str(Path(path).resolve()),
        "notes": notes,
        "curves_note": foreign.curves_note,
        "curves": {name: {str(k): v for k, v in sorted(c.items())} for name, c in foreign.curves.items()},
    }
    steps = list(weights)
    with staged(out) as tmp:
        run_dir = RunDir.create(tmp, to_yaml(prepared.config))
        for step, state in weights.items():
            run_dir.save_weights(TrainState(step, state, {}, {}))
        run_dir.write_metrics(rows)
        run_dir.write_source(source)
        write_summary(run_dir, prepared.config, rows, status="imported", step=steps[-1])
    return Imported(Run(out), (out / "config.yaml").read_text(), notes, steps, source)


def _fit(
    foreign: ForeignRun, step: int, expected: dict[str, torch.Tensor], notes: list[str]
) -> dict[str, torch.Tensor]:
    """The file's weights at `step` as the state dict of the model the config builds: every weight present with
    its shape; biases the file lacks are zeros; weights the model lacks must be zero (biases left out)."""
    have = foreign.checkpoints[step]
    state = {}
    for name, ref in expected.items():
        tensor = have.get(name)
        if tensor is None:
            if name.rsplit(".", 1)[-1].startswith("b_"):
                tensor = torch.zeros_like(ref)
                if f"zero {name}" not in notes:
                    notes.append(f"zero {name}: the config has the bias, the file not")
            else:
                raise ConfigError(
                    f"the model this config builds has '{name}', which {foreign.path} lacks; "
                    "undo the --set that added it (e.g. model.normalization)"
                )
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ConfigError(
                f"'{name}' is {tuple(tensor.shape)} in {foreign.path} but {tuple(ref.shape)} in the model this "
                "config builds; make the task and model match the file (--task, --set task.p=..., ...)"
            )
        state[name] = tensor.to(device=ref.device, dtype=ref.dtype).contiguous()
    for name in sorted(set(have) - set(expected)):
        if have[name].count_nonzero():
            bias = name.rsplit(".", 1)[-1].startswith("b_")
            raise ConfigError(
                f"{foreign.path} has a nonzero '{name}' that the model this config builds lacks; "
                + ("keep its group in --set model.biases=[...]" if bias else "undo the --set that changed the model")
            )
    return state


def _match_split(prepared: Prepared, foreign: ForeignRun, overrides: Sequence[str], notes: list[str]) -> Prepared:
    """When the file holds its train/test split, the config's must be the same: tried as inferred, then (unless
    the user set the split) with groklab's split methods and the seeds the file suggests."""
    if foreign.split is None:
        params = prepared.config.task.params()
        if "split" in params:
            notes.append(
                f"split: not in the file; train/test metrics use task.split={params['split']}, "
                f"data_seed={prepared.config.resolved_data_seed} (if yours differed, say so with --set)"
            )
        return prepared
    if _same_split(prepared, foreign.split):
        notes.append("split: the file's train/test indices are the config's")
        return prepared
    cfg = prepared.config
    task = cfg.task.params()
    where = f"task.split={task.get('split')}, data_seed={cfg.resolved_data_seed}"
    chosen = {item.partition("=")[0].strip() for item in overrides}
    if chosen & {"task.split", "data_seed", "seed"} or "split" not in task:
        raise ConfigError(f"the train/test split in {foreign.path} is not the one {where} makes; fix the --set")
    seeds = list(dict.fromkeys([cfg.resolved_data_seed, 0, *foreign.seed_hints]))
    for seed in seeds:
        for method in SPLITS:
            data = cfg.model_dump(mode="json")
            data["task"]["split"], data["data_seed"] = method, seed
            candidate = resolve(config_from_dict(data), str(prepared.device))
            if _same_split(candidate, foreign.split):
                notes.append(f"split: the file's train/test indices are task.split={method}, data_seed={seed}")
                return candidate
    raise ConfigError(
        f"the train/test split in {foreign.path} is none groklab can rebuild (tried {where} and splits "
        f"{', '.join(SPLITS)} with seeds {', '.join(map(str, seeds))}); "
        "give it with --set task.split=... --set data_seed=..."
    )


def _same_split(prepared: Prepared, split: tuple[torch.Tensor, torch.Tensor]) -> bool:
    train, test = prepared.task.train.index, prepared.task.test.index
    same = lambda a, b: len(a) == len(b) and torch.equal(torch.sort(a.cpu()).values, torch.sort(b.cpu()).values)  # noqa: E731
    return same(train, split[0]) and same(test, split[1])
