"""One unit of a sweep, in its own process: a run,
`python -m groklab.sweep.worker SWEEP_DIR SEED [KEY.PATH=JSON_VALUE ...] [--device=DEVICE]`
(the KEY=VALUE pairs name the point of the sweep's grid), or a batch of runs trained together,
`python -m groklab.sweep.worker SWEEP_DIR --batch NAME '[[POINT, SEED], ...]' [--device=DEVICE]`.
Starts the runs, or resumes them; finished runs are left as they are."""
from __future__ import annotations

import json
import os
import sys

from groklab.config import config_from_dict
from groklab.errors import UserError
from groklab.experiment import resume, run, run_batch
from groklab.store import SweepDir
from groklab.sweep import point_config


def main(argv: list[str]) -> int:
    if argv[1] == "--batch":
        return batch_main(argv)
    sweep_dir, seed = SweepDir.open(argv[0]), int(argv[1])
    device = next((a.split("=", 1)[1] for a in argv[2:] if a.startswith("--device=")), None)
    point = {key: json.loads(value) for key, value in (a.split("=", 1) for a in argv[2:] if not a.startswith("--"))}
    threads = int(os.environ["GROKLAB_THREADS"]) if "GROKLAB_THREADS" in os.environ else None
    path = sweep_dir.run_path(seed, point)
    try:
        if (path / "config.yaml").is_file():
            resume(path, device=device, report=False, threads=threads)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            run(point_config(config_from_dict(sweep_dir.spec["config"]), point, seed), path, device=device,
                report=False, threads=threads)
    except UserError as err:
        print(f"groklab sweep worker, seed {seed}: error: {err}", file=sys.stderr)
        return 2
    return 0


def batch_main(argv: list[str]) -> int:
    sweep_dir, name, members = SweepDir.open(argv[0]), argv[2], json.loads(argv[3])
    device = next((a.split("=", 1)[1] for a in argv[4:] if a.startswith("--device=")), None)
    threads = int(os.environ["GROKLAB_THREADS"]) if "GROKLAB_THREADS" in os.environ else None
    base = config_from_dict(sweep_dir.spec["config"])
    paths = [sweep_dir.run_path(seed, point) for point, seed in members]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_batch([point_config(base, point, seed) for point, seed in members], paths, sweep_dir.batch_state_path(name),
                  name=name, device=device, threads=threads)
    except UserError as err:
        print(f"groklab sweep worker, {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
