"""The tasks the engine trains, one package each: :mod:`~ckd.tasks.classification` and
:mod:`~ckd.tasks.detection`.

A task package holds the task's config sections (registered with the config loader), its
networks and the :class:`~ckd.methods.views.View` that shows a batch to the methods, its data,
its evaluation and the :class:`~ckd.engine.task.Task` the trainer runs (registered in
:data:`~ckd.engine.task.TASKS` by :func:`~ckd.engine.task.register_task`). Importing this
package registers them all; the engine and the config loader know them only through those
registries.
"""

from ckd.engine.task import TASKS, Task, register_task
from ckd.tasks import classification, detection

__all__ = ["TASKS", "Task", "classification", "detection", "register_task"]
