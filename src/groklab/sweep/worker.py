"""One seed of a sweep, in its own process: `python -m groklab.sweep.worker SWEEP_DIR SEED [DEVICE]`.
Starts the seed's run, or resumes it; a finished run is left as is."""
from __future__ import annotations

import os
import sys

import torch

from groklab.config import config_from_dict
from groklab.errors import UserError
from groklab.experiment import resume, run
from groklab.store import SweepDir


def main(argv: list[str]) -> int:
    sweep_dir, seed = SweepDir.open(argv[0]), int(argv[1])
    device = argv[2] if len(argv) > 2 else None
    torch.set_num_threads(int(os.environ.get("GROKLAB_THREADS", torch.get_num_threads())))
    path = sweep_dir.run_path(seed)
    try:
        if (path / "config.yaml").is_file():
            resume(path, device=device, report=False)
        else:
            config = config_from_dict(sweep_dir.spec["config"]).model_copy(update={"seed": seed})
            run(config, path, device=device, report=False)
    except UserError as err:
        print(f"groklab sweep worker, seed {seed}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
