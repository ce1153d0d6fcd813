"""Tasks layer: a task builds its data (vocabulary, train/test splits) and says how answers are scored."""

from groklab.tasks import images, modular, parity, permutations, structural  # noqa: F401  (register the tasks)
from groklab.tasks.base import IGNORE, Split, Task, split_indices
from groklab.tasks.registry import TASKS, build_task, register, register_task, task_params

__all__ = [
    "IGNORE",
    "TASKS",
    "Split",
    "Task",
    "build_task",
    "register",
    "register_task",
    "split_indices",
    "task_params",
]
