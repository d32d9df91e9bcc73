"""The flags that name a trained model, shared by the serving scripts.

`--model_dir` (a training run: its params.yaml and latest checkpoint), or
`--checkpoint` with `--experiment`; `--config_file` and `--params_override`
apply on top of either.
"""

from absl import flags

from tensormask_tf.configs import experiments

_FLAGS = {}


def define_flags():
  """Defines the model-source flags (once per program)."""
  _FLAGS["model_dir"] = flags.DEFINE_string(
      "model_dir", None,
      "A training run: its params.yaml and latest checkpoint.")
  _FLAGS["checkpoint"] = flags.DEFINE_string(
      "checkpoint", None, "A checkpoint (file prefix or directory).")
  _FLAGS["experiment"] = flags.DEFINE_string(
      "experiment", None, "The experiment, with --checkpoint.")
  _FLAGS["config_file"] = flags.DEFINE_multi_string("config_file", [],
                                                    "YAML overrides.")
  _FLAGS["params_override"] = flags.DEFINE_string("params_override", "",
                                                  "key=value overrides.")


def load():
  """(experiment params, checkpoint path or directory) from the flags.

  Raises:
    ValueError, FileNotFoundError: as `experiments.load_experiment`, or
      when neither --model_dir nor --checkpoint names a checkpoint.
  """
  value = {name: holder.value for name, holder in _FLAGS.items()}
  params = experiments.load_experiment(
      value["model_dir"], value["experiment"], tuple(value["config_file"]),
      value["params_override"])
  checkpoint = value["checkpoint"] or value["model_dir"]
  if not checkpoint:
    raise ValueError("give --model_dir, or --checkpoint with --experiment")
  return params, checkpoint
