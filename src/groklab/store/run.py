"""`load_run`: a run directory as Python objects, for notebooks and for the tools that read runs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
import yaml

from groklab.config import PluginError, RunConfig, config_from_dict
from groklab.errors import ConfigError, RunDirError
from groklab.models import build_model, model_config
from groklab.store.run_dir import RunDir
from groklab.tasks import Task, build_task


class Run:
    """A run on disk: its config, metrics table, summary and checkpoints (loaded lazily)."""

    def __init__(self, path: str | Path):
        self.dir = RunDir.open(Path(path))
        self.path = self.dir.path

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def config(self) -> RunConfig:
        try:
            return config_from_dict(yaml.safe_load(self.dir.config_yaml))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise RunDirError(
                f"{self.path}/config.yaml is corrupt (invalid YAML{where}); the run cannot be read"
            ) from None
        except PluginError:  # not the file's fault: a plugin it names is missing or broken here
            raise
        except ConfigError as err:
            raise RunDirError(f"{self.path}/config.yaml is corrupt ({err}); the run cannot be read") from None

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per evaluation step, one column per quantity (train_loss, test_acc, ...)."""
        return self.dir.metrics()

    @property
    def summary(self) -> dict:
        return self.dir.read_summary()

    @property
    def steps(self) -> list[int]:
        """Steps with saved weights."""
        return self.dir.checkpoint_steps()

    def checkpoint(self, step: int | None = None, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The model's state dict at `step` (default: the last checkpoint); only `names` if given."""
        steps = self.steps
        if not steps:
            raise RunDirError(f"{self.path} has no checkpoints yet")
        return self.dir.load_weights(steps[-1] if step is None else step, names)

    @property
    def status(self) -> str:
        """running | finished | stopped_early | interrupted | diverged | killed (a 'running' run whose
        process is gone) | new (no checkpoint yet)."""
        summary = self.summary
        status = summary.get("status", "new")
        if status == "running" and not _alive(summary):
            return "killed"
        return status

    @cached_property
    def task(self) -> Task:
        return build_task(self.config.task, self.config.resolved_data_seed)

    def model(self, step: int | None = None) -> torch.nn.Module:
        """The model with its weights at `step` (default: the last checkpoint), in eval mode."""
        task = self.task
        model = build_model(model_config(self.config.model, task), self.config.resolved_model_seed)
        model.load_state_dict(self.checkpoint(step))
        return model.eval()


def load_run(path: str | Path) -> Run:
    return Run(path)


def _alive(summary: dict) -> bool:
    """Whether the process that wrote a 'running' summary still runs: its pid, on this host; on another host
    (a cluster node) this cannot be told from here, and the summary is taken at its word."""
    import os
    import socket

    pid = summary.get("pid")
    if summary.get("host") and summary.get("host") != socket.gethostname():
        return True
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
