"""Store layer: the only code that touches run directories."""

from groklab.store.run import Run, load_run
from groklab.store.run_dir import RunDir, load_states, save_states
from groklab.store.sweep_dir import SweepDir

__all__ = ["Run", "RunDir", "SweepDir", "load_run", "load_states", "save_states"]
