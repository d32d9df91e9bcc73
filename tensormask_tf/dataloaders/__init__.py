"""tf.data input pipeline of TensorMask."""
