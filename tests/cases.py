"""The foundation shape cases of the representation ops, shared by the test
suite and the standalone CUDA harness (custom_ops/cuda_test), which runs
where TensorFlow is not installed: plain Python, no imports beyond itertools.
"""

import itertools

WINDOWS = (2, 3, 5, 11, 15)
LAMS = (1, 2, 3, 4, 8)
PADS = (-6.0, 0.0, 0.5)
# Odd and even sizes, divisible by lam and not.
SIZES = ((5, 8), (9, 6), (7, 7), (12, 11), (8, 13))
# (S, lam, pad, (H, W)) for every S x lam, cycling through pads and sizes.
CASES = [(s, lam, PADS[k % len(PADS)], SIZES[k % len(SIZES)])
         for k, (s, lam) in enumerate(itertools.product(WINDOWS, LAMS))]
