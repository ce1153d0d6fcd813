"""Kill a groklab process with SIGKILL at an exact moment of its run, for the resume tests.

    python tests/kill_at.py EVENT N groklab ARGS...      # the CLI, as `groklab ARGS...`
    python tests/kill_at.py EVENT N worker SWEEP_DIR '[[POINT, SEED], ...]'  # a sweep's worker (a run or a batch)

EVENT N is the moment, counted in the run-directory writes the process makes:
  metrics N      just after the N-th metrics row is appended (before anything else is written)
  checkpoint N   just after the N-th checkpoint (weights and resume state) is saved
  state N        inside the N-th checkpoint: its weights are on disk, its resume state is not
  ended 1        just after the checkpoint that ends the run early (early stop, divergence)
  weights N      just after the N-th weights file (a batch member's checkpoint) is saved
  states N       just before the N-th batch resume state is written (a batch's members' states)
The process kills itself (SIGKILL: no handler, no clean-up), so the moment is exact, unlike a kill
from outside timed by polling the files.
"""

import os
import signal
import sys

from groklab.store import run_dir

event, n, target, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
counts = {"metrics": 0, "checkpoint": 0, "state": 0, "ended": 0, "weights": 0, "states": 0}


def count(kind: str, when: bool = True) -> None:
    if when:
        counts[kind] += 1
        if kind == event and counts[kind] == n:
            os.kill(os.getpid(), signal.SIGKILL)


append_metrics, save_checkpoint, save_weights, atomic_write = (
    run_dir.RunDir.append_metrics,
    run_dir.RunDir.save_checkpoint,
    run_dir.RunDir.save_weights,
    run_dir._atomic_write,
)


def killing_append(self, row):
    append_metrics(self, row)
    count("metrics")


def killing_save(self, state):
    save_checkpoint(self, state)
    count("checkpoint")
    count("ended", getattr(state, "ended", None) is not None)


def killing_weights(self, state):
    save_weights(self, state)
    count("weights")


def killing_write(path, write):
    count("state", path.name == run_dir.STATE)
    count("states", path.parent.name == "batches")
    atomic_write(path, write)


run_dir.RunDir.append_metrics, run_dir.RunDir.save_checkpoint = killing_append, killing_save
run_dir.RunDir.save_weights = killing_weights
run_dir._atomic_write = killing_write

if target == "groklab":
    from groklab.cli import main

    main(args)
elif target == "worker":
    from groklab.sweep.worker import main

    sys.exit(main(args))
else:
    sys.exit(f"unknown target {target}")
