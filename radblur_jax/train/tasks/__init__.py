"""One task object per training stage; `make_task(config)` picks it by `config.stage`."""
from __future__ import annotations

import ml_collections

from radblur_jax.train.tasks.base import Phase, Task
from radblur_jax.train.tasks.deblur import DeblurTask
from radblur_jax.train.tasks.depth import DepthTask

TASKS: dict[str, type[Task]] = {DeblurTask.stage: DeblurTask, DepthTask.stage: DepthTask}


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The task of `config.stage` (checked by `config_base.check_config`), model built."""
    return TASKS[config.stage](config)


__all__ = ["TASKS", "DeblurTask", "DepthTask", "Phase", "Task", "make_task"]
