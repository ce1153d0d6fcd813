"""groklab: reproduce and study grokking: progress measures, structural grokking, training maps.

import groklab
run = groklab.run(groklab.load_preset("nanda-mod-add"))
run.metrics            # pandas DataFrame, one row per evaluation step
run.model(step=5000)   # the transformer at a checkpoint

Your own task, measure set or model: `register_task`, `register_measure`, `register_model` in a module of
yours, named in a config's `plugins:` or installed as a `groklab.plugins` entry point (docs/extending.md).
"""

from groklab import runtime

runtime.configure_openmp()  # before anything loads torch (and its libgomp)

from groklab.config import RunConfig, load_config, load_preset, preset_names  # noqa: E402
from groklab.errors import ConfigError, RunDirError, UserError  # noqa: E402
from groklab.experiment import measure, resume, run  # noqa: E402
from groklab.measures import register_measure  # noqa: E402
from groklab.models import register_model  # noqa: E402
from groklab.store import Run, load_run  # noqa: E402
from groklab.tasks import register_task  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "Run",
    "RunConfig",
    "RunDirError",
    "UserError",
    "import_run",
    "load_config",
    "load_preset",
    "load_run",
    "measure",
    "preset_names",
    "register_measure",
    "register_model",
    "register_task",
    "resume",
    "run",
    "write_report",
]


def write_report(*args, **kwargs):
    """groklab.report.write_report (imported on first use: plotly is heavy)."""
    from groklab.report import write_report as write

    return write(*args, **kwargs)


def import_run(*args, **kwargs):
    """groklab.importing.import_run: checkpoints trained elsewhere (Nanda et al.'s code, TransformerLens) as a run."""
    from groklab.importing import import_run as import_

    return import_(*args, **kwargs)
