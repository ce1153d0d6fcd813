"""Dynamics layer: pure numpy/pandas over metric tables (no torch): summaries, phases, training maps."""
from groklab.dynamics.phases import detect_phases, phase_evidence
from groklab.dynamics.summary import GROK_THRESHOLD, check_outcome, first_step, summarize

__all__ = ["GROK_THRESHOLD", "detect_phases", "phase_evidence", "check_outcome", "first_step", "summarize"]
