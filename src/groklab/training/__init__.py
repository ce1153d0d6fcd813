"""Training layer: the loop (optimizer, schedule, evaluation, checkpoints, resume). No files."""
from groklab.training.loop import Outcome, Probe, Sink, Trainer, TrainState, evaluate, met

__all__ = ["Outcome", "Probe", "Sink", "TrainState", "Trainer", "evaluate", "met"]
