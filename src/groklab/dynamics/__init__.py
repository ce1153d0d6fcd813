"""Dynamics layer: pure numpy/pandas over metric tables (no torch): summaries, phases, training maps."""

from groklab.dynamics.detours import (
    censored_median,
    convergence_threshold,
    convergence_times,
    detour_test,
    occupancy_over_time,
    state_occupancy,
    training_map_graph,
    transition_features,
    transition_table,
    visited,
)
from groklab.dynamics.hmm import FEATURE_SETS, TrainingMap
from groklab.dynamics.phases import detect_phases, detect_stages, phase_evidence
from groklab.dynamics.robustness import map_robustness
from groklab.dynamics.slingshots import detect_slingshots, slingshot_summary
from groklab.dynamics.summary import GROK_THRESHOLD, check_outcome, first_step, summarize

__all__ = [
    "FEATURE_SETS",
    "GROK_THRESHOLD",
    "TrainingMap",
    "censored_median",
    "check_outcome",
    "convergence_threshold",
    "convergence_times",
    "detect_phases",
    "detect_slingshots",
    "detect_stages",
    "detour_test",
    "first_step",
    "map_robustness",
    "occupancy_over_time",
    "phase_evidence",
    "slingshot_summary",
    "state_occupancy",
    "summarize",
    "training_map_graph",
    "transition_features",
    "transition_table",
    "visited",
]
