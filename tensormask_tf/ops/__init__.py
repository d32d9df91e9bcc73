"""Pure functions on tensors: the tensor-representation ops (SPEC.md 2) and
the window assignment rule (SPEC.md 3)."""

from tensormask_tf.ops.mask_representation import align2nat
from tensormask_tf.ops.mask_representation import DEFAULT_PAD
from tensormask_tf.ops.mask_representation import nat2align
from tensormask_tf.ops.mask_representation import swap_align2nat
from tensormask_tf.ops.mask_representation import swap_align2nat_gather
from tensormask_tf.ops.mask_representation import up_align2nat
from tensormask_tf.ops.window_assignment import assign_windows

__all__ = [
    "DEFAULT_PAD",
    "align2nat",
    "assign_windows",
    "nat2align",
    "swap_align2nat",
    "swap_align2nat_gather",
    "up_align2nat",
]
