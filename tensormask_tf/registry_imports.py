"""Imports that register TensorMask's task and experiments with Model Garden.

Import this module before `exp_factory.get_exp_config("tensormask_...")` or
`task_factory.get_task(...)`.
"""

# pylint: disable=unused-import
from tensormask_tf.configs import experiments  # noqa: F401
from tensormask_tf.tasks import tensormask  # noqa: F401
