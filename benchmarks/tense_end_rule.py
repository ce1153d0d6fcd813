"""How much the tense main-verb metric depends on where the output ends (issue 15 §3), on a real run.

Murty et al.'s released scorer drops the last token before EOS, whatever it is (`task.main_verb_end:
last_token`, groklab's default); the earlier rule strips only a final "." (`final_period`). They agree on
every well-formed output and flip on outputs without their final "." or with two. This decodes each saved
checkpoint of a `tense_inflection` run once, on the items its evaluation scores, and prints per checkpoint
both accuracies, the outputs that are not well formed, and the difference:

    python benchmarks/tense_end_rule.py RUN_DIR [--every 1000]

Nothing is asserted; it measures.
"""

from __future__ import annotations

import argparse

from groklab.store import load_run
from groklab.tasks import lm_eval, mccoy
from groklab.tasks.structural import RELEASED_TENSE_ITEMS, _mccoy_sets


def held_items(run) -> dict[str, list]:
    """The items the run's evaluation scores, per set (as build_tense_inflection selects them)."""
    params, seed = run.config.task, run.config.resolved_data_seed
    data = _mccoy_sets("tense", params, seed)
    if params.eval_sample == "released":
        return {
            "id": lm_eval._select(data["val"], False, None, seed),
            "gen": lm_eval._select(data["test"], False, RELEASED_TENSE_ITEMS, seed),
        }
    return {"id": data["val"][: params.eval_items], "gen": data["test"][: params.eval_items]}


def well_formed(pred: tuple[str, ...]) -> bool:
    return bool(pred) and pred[-1] == "." and (len(pred) < 2 or pred[-2] != ".")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--every", type=int, default=1, help="only checkpoints at multiples of this step")
    args = parser.parse_args()
    run = load_run(args.run_dir)
    if run.config.task.name != "tense_inflection":
        raise SystemExit(f"{args.run_dir}: a {run.config.task.name} run; this measures tense_inflection runs")
    vocab = lm_eval.lm_vocabulary(mccoy.vocabulary("tense"))
    items = held_items(run)
    print(f"{args.run_dir}: {', '.join(f'{k} {len(v)} items' for k, v in items.items())}")
    print("step   | set | last_token | final_period | diff   | not well formed")
    for step in run.steps:
        if step % args.every:
            continue
        fn = lm_eval.model_logits_fn(run.model(step))
        for key, its in items.items():
            preds = lm_eval._decoded(fn, vocab, its, 50, 64)
            acc = {
                end: sum(mccoy.main_verb_correct(p, it.target, mccoy.POS, end) for p, it in zip(preds, its)) / len(its)
                for end in ("last_token", "final_period")
            }
            bad = sum(not well_formed(p) for p in preds) / len(its)
            diff = acc["final_period"] - acc["last_token"]
            print(
                f"{step:6d} | {key:3s} | {acc['last_token']:10.3f} | {acc['final_period']:12.3f} | {diff:+.3f} | {bad:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
