"""Run presets end to end and check each against the outcome its YAML declares.

The test suite checks `quick`; this checks the long ones (minutes each on a 2-core CPU):

    python benchmarks/check_presets.py [PRESET ...] [--seed N] [--out DIR]

Prints, per preset, the headline figures and "met" or what was not met; exits 1 if any preset
missed its expected outcome.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import groklab
from groklab.dynamics import check_outcome

LONG = [
    "nanda-mod-add",
    "power-mod-div",
    "grokfast-ma",
    "grokfast-ema",
    "prieto-orthograd",
    "prieto-softmax-collapse",
    "omnigrok-fixed-norm",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=LONG)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="groklab-presets-"))
    missed = 0
    for name in args.presets:
        config = groklab.load_config(name, seed=args.seed)
        run = groklab.run(config, root / f"{name}-s{config.seed}")
        s = run.summary
        failures = check_outcome(s, config.outcome)
        missed += bool(failures)
        print(
            f"{name} (seed {config.seed}): {s['status']} at step {s['last_step']} in {s['elapsed_s']:.0f} s "
            f"({s['steps_per_s']} steps/s); train acc >= 99% at step {s['step_train_acc_99']}, "
            f"test acc >= 99% at step {s['step_test_acc_99']}"
            + (f" ({s['elapsed_s_test_acc_99']:.0f} s)" if s.get("elapsed_s_test_acc_99") is not None else "")
        )
        if s.get("circuit_formation_end") is not None or s.get("phase_note"):
            print(
                f"  phases: memorization ends {s.get('memorization_end')}, circuit formation ends "
                f"{s.get('circuit_formation_end')}, cleanup ends {s.get('cleanup_end')} {s.get('phase_note', '')}"
            )
        checked = [k for k in config.outcome if k not in ("grokked", "step_train_acc_99", "step_test_acc_99")]
        print("  measured: " + ", ".join(f"{k} = {s.get(k)}" for k in checked))
        print(f"  expected: {config.expected}")
        start = time.perf_counter()
        report = groklab.write_report([run.path])
        print(f"  report: {report.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - start:.1f} s")
        print("  outcome: " + ("met" if not failures else "NOT met: " + "; ".join(failures)), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
