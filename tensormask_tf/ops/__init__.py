"""Pure functions on tensors: the tensor-representation ops (docs/ops.md),
windows, the assignment rule and training targets (docs/model.md)."""

from tensormask_tf.ops.mask_projection import GatherRequest
from tensormask_tf.ops.mask_projection import project_swap_align2nat_gather
from tensormask_tf.ops.mask_projection import project_swap_align2nat_gather_many
from tensormask_tf.ops.mask_representation import align2nat
from tensormask_tf.ops.mask_representation import DEFAULT_PAD
from tensormask_tf.ops.mask_representation import nat2align
from tensormask_tf.ops.mask_representation import swap_align2nat
from tensormask_tf.ops.mask_representation import swap_align2nat_gather
from tensormask_tf.ops.mask_representation import up_align2nat
from tensormask_tf.ops.mask_representation import up_align2nat_gather
from tensormask_tf.ops.upsampled_conv import upsampled_conv3x3
from tensormask_tf.ops.winograd_conv import winograd_conv3x3
from tensormask_tf.ops.winograd_conv import winograd_pays_off
from tensormask_tf.ops.window_assignment import assign_windows
from tensormask_tf.ops.window_labeler import label_windows
from tensormask_tf.ops.window_targets import decode_window_boxes
from tensormask_tf.ops.window_targets import encode_window_boxes
from tensormask_tf.ops.window_targets import window_mask_targets
from tensormask_tf.ops.windows import generate_windows
from tensormask_tf.ops.windows import WindowSpec

__all__ = [
    "DEFAULT_PAD",
    "GatherRequest",
    "WindowSpec",
    "align2nat",
    "assign_windows",
    "decode_window_boxes",
    "encode_window_boxes",
    "generate_windows",
    "label_windows",
    "nat2align",
    "project_swap_align2nat_gather",
    "project_swap_align2nat_gather_many",
    "swap_align2nat",
    "swap_align2nat_gather",
    "up_align2nat",
    "up_align2nat_gather",
    "upsampled_conv3x3",
    "window_mask_targets",
    "winograd_conv3x3",
    "winograd_pays_off",
]
