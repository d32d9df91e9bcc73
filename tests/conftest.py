"""Shared pytest setup: the package's environment defaults apply before TF loads."""

import tensormask_tf  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL, TF_USE_LEGACY_KERAS)
