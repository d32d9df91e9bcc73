"""TensorMask's losses (docs/model.md)."""

from tensormask_tf.losses.tensormask_losses import box_l1_loss
from tensormask_tf.losses.tensormask_losses import focal_loss_star
from tensormask_tf.losses.tensormask_losses import mask_loss
from tensormask_tf.losses.tensormask_losses import positive_mask_rows
from tensormask_tf.losses.tensormask_losses import positive_normalizer
from tensormask_tf.losses.tensormask_losses import tensormask_losses

__all__ = ["box_l1_loss", "focal_loss_star", "mask_loss", "positive_mask_rows",
           "positive_normalizer", "tensormask_losses"]
