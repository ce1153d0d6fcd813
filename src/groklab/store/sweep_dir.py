"""The sweep directory: many runs of one config that differ in their seed (and the values of a grid).

SWEEP_DIR/
  sweep.yaml            the base config and the seeds (what `groklab sweep` was asked)
  runs/seed_0007/       one run directory per seed (see run_dir.py); with a grid,
  runs/model.n_layers=4/seed_0007/   one per point of the grid and seed
  logs/seed_0007.log    each worker's output (logs/batch-NAME.log: a batch's)
  batches/batch-NAME.safetensors  a batch's resume state: its members' states at one step (atomic)
  table.csv             one row per seed: status, convergence, final accuracies (atomic)
  map/                  the training map of the sweep (`groklab map`); map/KEY=VALUE/: of one grid point
  mlflow/               with --report-to mlflow: the runs' MLflow store, one experiment (store/trackers.py)

An imported sweep (store.importers, `groklab import hf`) has runs/seed_NNNN/ only, and sweep.yaml also says
where it came from (imported:) and how its map is fitted: metric (the convergence column, or null),
threshold (null: derived from the runs) and covariance (diag).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from pathlib import Path

import pandas as pd
import yaml

from groklab.errors import RunDirError
from groklab.store.run_dir import _atomic_write

SWEEP, RUNS, LOGS, TABLE, MAP, BATCHES = "sweep.yaml", "runs", "logs", "table.csv", "map", "batches"


def point_name(point: dict) -> str:
    """{"model.n_layers": 4} -> "model.n_layers=4" (a directory name)."""
    return ",".join(f"{key}={value}" for key, value in point.items())


def point_label(point) -> str:
    """{"model.n_layers": 4, "train.lr": 0.1} (or its items) -> "model.n_layers=4, train.lr=0.1": a grid point
    in a legend or a log line; "" for no point."""
    return ", ".join(f"{key}={value}" for key, value in dict(point).items())


# a preset's words and checks, not what its runs compute: groklab may reword them between versions
DESCRIPTIVE = ("source", "expected", "outcome")


def _normalized(config: dict) -> dict:
    """A stored config as today's schema reads it, without its descriptive fields: a field added since (with
    its default) or a preset's reworded `expected` text is no difference."""
    from groklab.config import config_from_dict
    from groklab.errors import ConfigError

    with contextlib.suppress(ConfigError):  # a config today's schema refuses: compared as stored
        config = config_from_dict(config).model_dump(mode="json")
    return {k: v for k, v in config.items() if k not in DESCRIPTIVE}


class SweepDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def is_sweep(cls, path: Path) -> bool:
        return (Path(path) / SWEEP).is_file()

    @classmethod
    def create_or_open(
        cls, path: Path, config: dict, seeds: list[int], threshold: float = 0.9, grid: dict[str, list] | None = None
    ) -> SweepDir:
        """A new sweep directory, or the existing one when it holds the same config and grid (to resume
        it). `grid` {key.path: [values]}: every combination is run for every seed. `threshold` (the test
        accuracy at which a run counts as converged) is the latest one asked."""
        path = Path(path)
        spec = {"config": config, "grid": dict(grid or {}), "seeds": sorted(seeds), "threshold": threshold}
        if path.exists():
            if not cls.is_sweep(path):
                if path.is_dir() and not any(path.iterdir()):
                    pass
                else:
                    raise RunDirError(f"{path} exists and is not a groklab sweep; choose another --out")
            else:
                old = cls.open(path).spec
                if _normalized(old["config"]) != _normalized(config) or old.get("grid", {}) != spec["grid"]:
                    raise RunDirError(
                        f"{path} holds a sweep of another config or grid; resume it with its own "
                        "command or choose another --out"
                    )
                spec["seeds"] = sorted(set(old["seeds"]) | set(seeds))
        try:
            (path / RUNS).mkdir(parents=True, exist_ok=True)
            (path / LOGS).mkdir(exist_ok=True)
            _atomic_write(path / SWEEP, lambda tmp: tmp.write_text(yaml.safe_dump(spec, sort_keys=False)))
        except OSError as err:
            raise RunDirError(f"cannot create sweep directory {path}: {err.strerror}; choose another --out") from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> SweepDir:
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"no sweep directory at {path}")
        if not cls.is_sweep(path):
            raise RunDirError(f"{path} is not a groklab sweep (no {SWEEP})")
        return cls(path)

    @property
    def spec(self) -> dict:
        try:
            spec = yaml.safe_load((self.path / SWEEP).read_text())
            assert isinstance(spec, dict) and "config" in spec and "seeds" in spec
            return spec
        except (yaml.YAMLError, AssertionError):
            raise RunDirError(f"{self.path}/{SWEEP} is corrupt; the sweep cannot be read") from None

    @property
    def threshold(self) -> float | None:
        """The convergence threshold of the sweep's table and map; None (an imported sweep): derived from the
        runs when used (dynamics.convergence_threshold)."""
        value = self.spec.get("threshold", 0.9)
        return None if value is None else float(value)

    @property
    def metric(self) -> str | None:
        """The metrics column convergence is read from: test_acc, or what an import recorded (None: none)."""
        return self.spec.get("metric", "test_acc")

    @property
    def covariance(self) -> str:
        """The HMM covariance its training map is fitted with by default: full, or what an import recorded."""
        return self.spec.get("covariance", "full")

    @property
    def imported(self) -> dict | None:
        """Where an imported sweep came from (store.importers), or None for a sweep groklab trained."""
        return self.spec.get("imported")

    @property
    def seeds(self) -> list[int]:
        return list(self.spec["seeds"])

    @property
    def points(self) -> list[dict]:
        """Every combination of the grid's values, {key.path: value} ([{}] without a grid)."""
        grid = self.spec.get("grid") or {}
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]

    def run_path(self, seed: int, point: dict | None = None) -> Path:
        """RUNS/seed_NNNN, or RUNS/KEY=VALUE,.../seed_NNNN for a point of the grid."""
        return (
            self.path / RUNS / point_name(point) / f"seed_{seed:04d}"
            if point
            else self.path / RUNS / f"seed_{seed:04d}"
        )

    def batch_state_path(self, name: str) -> Path:
        (self.path / BATCHES).mkdir(exist_ok=True)
        return self.path / BATCHES / f"{name}.safetensors"

    def log_path(self, seed: int, point: dict | None = None) -> Path:
        return self.path / LOGS / (f"{point_name(point)},seed_{seed:04d}.log" if point else f"seed_{seed:04d}.log")

    def map_path(self, point: dict | None = None, name: str | None = None) -> Path:
        """MAP/, or MAP/KEY=VALUE,.../ for the map of one point of the grid; MAP-NAME/... for a map kept beside
        the sweep's own (`groklab map --name`: another K, feature set or threshold, compared side by side)."""
        root = self.path / (MAP if name is None else f"{MAP}-{name}")
        return root / point_name(point) if point else root

    @property
    def map_dir(self) -> Path:
        return self.map_path()

    def write_map(
        self,
        tables: dict[str, pd.DataFrame],
        page: str,
        save_map,
        save_model,
        point: dict | None = None,
        name: str | None = None,
    ) -> Path:
        """Replace the training map (MAP/, or MAP/POINT/ for a point of the grid) with the new one: CSV tables,
        report.html, the drawings written by `save_map(dir)` and the fitted model by `save_model(path)`.
        Written next to it first and swapped in, so an interrupted `groklab map` leaves the previous map whole.
        `name`: into MAP-NAME/ instead (the sweep's own map untouched)."""
        target = self.map_path(point, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = target.parent / f".{target.name}.tmp", target.parent / f".{target.name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "report.html").write_text(page)
        save_map(tmp)
        save_model(tmp / "training_map.json")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return target

    def read_map(
        self, point: dict | None = None, names: tuple[str, ...] = ("states", "detours", "transitions", "convergence")
    ) -> dict | None:
        """The stored training map's tables {name: DataFrame} (of one point of the grid), or None when the
        sweep has no map (or it cannot be read: it is fitted again)."""
        target = self.map_path(point)
        try:
            return {name: pd.read_csv(target / f"{name}.csv") for name in names}
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return None

    def write_table(self, table: pd.DataFrame) -> None:
        _atomic_write(self.path / TABLE, lambda tmp: table.to_csv(tmp, index=False))

    def write_report(self, html: str) -> Path:
        """SWEEP_DIR/report.html (groklab report SWEEP_DIR: the grid figure and table)."""
        path = self.path / "report.html"
        _atomic_write(path, lambda tmp: tmp.write_text(html))
        return path

    def read_table(self) -> pd.DataFrame | None:
        """The stored sweep table, or None when there is none or it cannot be read (it is rebuilt from the runs)."""
        path = self.path / TABLE
        try:
            return pd.read_csv(path) if path.is_file() else None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return None
