"""A `tensormask_shapes` experiment shrunk for fast tests (not a test)."""

from official.core import exp_factory
from official.core import task_factory
from tensormask_tf import registry_imports  # noqa: F401

# Overrides that make the shapes model small and the run short.
TINY_OVERRIDES = {
    "task": {
        "model": {
            "decoder": {"fpn": {"num_filters": 16}},
            "head": {"num_convs": 1, "class_filters": 16, "box_filters": 8,
                     "mask_filters": 8},
        },
        "train_data": {"global_batch_size": 4},
        "validation_data": {"global_batch_size": 4},
    },
}


def _data_overrides(shapes_records: dict) -> dict:
  return {"task": {
      "annotation_file": shapes_records["val_json"],
      "train_data": {"input_path": shapes_records["train"]},
      "validation_data": {"input_path": shapes_records["val"]}}}


def tiny_shapes_experiment(shapes_records: dict):
  """The tensormask_shapes experiment on the test dataset, tiny."""
  params = exp_factory.get_exp_config("tensormask_shapes")
  params.override(TINY_OVERRIDES, is_strict=True)
  params.override(_data_overrides(shapes_records), is_strict=True)
  return params


def _flatten(tree: dict, prefix: str = "") -> list[str]:
  items = []
  for key, value in tree.items():
    if isinstance(value, dict):
      items += _flatten(value, f"{prefix}{key}.")
    else:
      items.append(f"{prefix}{key}={value}")
  return items


def params_override_string(shapes_records: dict, extra: str = "") -> str:
  """The same overrides as a --params_override string for train.py."""
  items = _flatten(TINY_OVERRIDES) + _flatten(_data_overrides(shapes_records))
  return ",".join(items + ([extra] if extra else []))


def build_model(params):
  """The experiment's model, built by its task."""
  return task_factory.get_task(params.task).build_model()
