"""Pure functions on tensors: the tensor-representation ops (SPEC.md 2)."""

from tensormask_tf.ops.mask_representation import align2nat
from tensormask_tf.ops.mask_representation import DEFAULT_PAD
from tensormask_tf.ops.mask_representation import nat2align
from tensormask_tf.ops.mask_representation import swap_align2nat
from tensormask_tf.ops.mask_representation import swap_align2nat_gather
from tensormask_tf.ops.mask_representation import up_align2nat

__all__ = [
    "DEFAULT_PAD",
    "align2nat",
    "nat2align",
    "swap_align2nat",
    "swap_align2nat_gather",
    "up_align2nat",
]
