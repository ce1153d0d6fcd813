"""Store layer: the only code that touches run directories."""
from groklab.store.run import Run, load_run
from groklab.store.run_dir import RunDir

__all__ = ["Run", "RunDir", "load_run"]
