"""Training layer: the loop (optimizer, schedule, evaluation, checkpoints, resume). No files."""
from groklab.training.loop import Outcome, Sink, Trainer, TrainState, evaluate, met

__all__ = ["Outcome", "Sink", "TrainState", "Trainer", "evaluate", "met"]
