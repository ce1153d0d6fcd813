"""One run of a sweep, in its own process:
`python -m groklab.sweep.worker SWEEP_DIR SEED [KEY.PATH=JSON_VALUE ...] [--device=DEVICE]`
(the KEY=VALUE pairs name the point of the sweep's grid). Starts the run, or resumes it; a finished run
is left as is."""
from __future__ import annotations

import json
import os
import sys

import torch

from groklab.config import config_from_dict
from groklab.errors import UserError
from groklab.experiment import resume, run
from groklab.store import SweepDir
from groklab.sweep import point_config


def main(argv: list[str]) -> int:
    sweep_dir, seed = SweepDir.open(argv[0]), int(argv[1])
    device = next((a.split("=", 1)[1] for a in argv[2:] if a.startswith("--device=")), None)
    point = {key: json.loads(value) for key, value in (a.split("=", 1) for a in argv[2:] if not a.startswith("--"))}
    torch.set_num_threads(int(os.environ.get("GROKLAB_THREADS", torch.get_num_threads())))
    path = sweep_dir.run_path(seed, point)
    try:
        if (path / "config.yaml").is_file():
            resume(path, device=device, report=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            run(point_config(config_from_dict(sweep_dir.spec["config"]), point, seed), path, device=device,
                report=False)
    except UserError as err:
        print(f"groklab sweep worker, seed {seed}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
