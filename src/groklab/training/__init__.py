"""Training layer: the loop (optimizer, schedule, evaluation, checkpoints, resume). No files."""

from groklab.training.loop import Outcome, Probe, Sink, Trainer, TrainState, evaluate, met
from groklab.training.population import Population, batchable

__all__ = ["Outcome", "Population", "Probe", "Sink", "TrainState", "Trainer", "batchable", "evaluate", "met"]
