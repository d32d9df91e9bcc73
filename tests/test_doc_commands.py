"""Every command in the README's (and docs/') shell blocks names a script,
flags, flag files, config files, experiments, overrides and pytest markers
that exist, so the docs cannot rot silently.

A command is a line of a ```bash block (continuation lines joined) that runs
one of the project's scripts: `python scripts/X.py ...`,
`.venv/bin/python scripts/X.py ...`, `bash scripts/X.sh ...`. Other commands
(docker, pip, cp) are not the project's and are left alone. `...` stands for
"the flags above" and placeholders like `<version>` are values, which are
not checked (values that name an experiment, a flag or config file or an
override are).
"""

import configparser
import functools
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from official.core import exp_factory
from official.modeling import hyperparams
from tensormask_tf import registry_imports  # noqa: F401  (the experiments)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
_PYTHONS = {"python", "python3", ".venv/bin/python", "$python"}
_SEPARATORS = {"&&", "||", "|", ";"}
# absl flags every script has; `flagfile` is absl's own and not listed.
_ABSL_FLAGFILE = "flagfile"


def shell_commands(markdown: str) -> list[str]:
  """The lines of the ```bash / ```sh / ```shell blocks, continuations
  joined."""
  commands = []
  for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", markdown, re.S):
    commands += [line.strip() for line in
                 re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
  return commands


def _words(command: str) -> list[list[str]]:
  """The command's simple commands (split at `&&`, `|`, `;`), as words
  without comments."""
  try:
    words = shlex.split(command, comments=True)
  except ValueError as e:
    raise AssertionError(f"cannot split {command!r}: {e}") from e
  parts, part = [], []
  for word in words:
    if word in _SEPARATORS:
      parts.append(part)
      part = []
    else:
      part.append(word)
  return [p for p in parts + [part] if p]


def _flag_name_and_value(word: str) -> tuple[str, str | None]:
  name, _, value = word[2:].partition("=")
  return name, (value if "=" in word else None)


def _is_absl(script: str) -> bool:
  return "from absl import flags" in (ROOT / script).read_text()


def _absl_flags(scripts: list[str]) -> dict[str, frozenset[str]]:
  """{script: the flag names it accepts} of absl scripts, from `--helpxml`
  (what the script defines when run, Model Garden's train flags included),
  one process per script, in parallel."""
  processes = {script: subprocess.Popen(
      [sys.executable, script, "--helpxml"], cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for script in scripts}
  result = {}
  for script, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    names = re.findall(r"<name>(\w+)</name>", stdout)
    assert names, f"{script} --helpxml listed no flags: {stderr[-2000:]}"
    result[script] = frozenset(names + [_ABSL_FLAGFILE])
  return result


@functools.cache
def _documented_absl_flags() -> dict[str, frozenset[str]]:
  """`_absl_flags` of every absl script in the documents' commands."""
  return _absl_flags(sorted({
      words[0] for name in DOCUMENTS
      for command in shell_commands((ROOT / name).read_text())
      for words in _script_words(command)
      if (ROOT / words[0]).is_file() and words[0].endswith(".py")
      and _is_absl(words[0])}))


def script_flags(script: str) -> frozenset[str]:
  """The flag names `script` accepts: an absl script's from `--helpxml`;
  an argparse script's `add_argument("--...")` names."""
  if not _is_absl(script):
    source = (ROOT / script).read_text()
    return frozenset(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source)
                     + ["help"])
  documented = _documented_absl_flags()
  if script in documented:
    return documented[script]
  return _absl_flags([script])[script]  # In no document (the tests' own).


def _pytest_markers() -> set[str]:
  parser = configparser.ConfigParser()
  parser.read(ROOT / "pytest.ini")
  lines = parser["pytest"]["markers"].strip().splitlines()
  return {line.split(":")[0].strip() for line in lines if line.strip()}


def _flags_with_flagfiles(args: list[str], where: str,
                          problems: list[str]) -> list[tuple[str, str | None]]:
  """(name, value) of every `--flag` in args, flag files expanded."""
  result = []
  for word in args:
    if not word.startswith("--"):
      continue
    name, value = _flag_name_and_value(word)
    result.append((name, value))
    if name == _ABSL_FLAGFILE and value:
      path = ROOT / value
      if not path.is_file():
        problems.append(f"{where}: flag file {value} does not exist")
        continue
      lines = [line.strip() for line in path.read_text().splitlines()]
      result += _flags_with_flagfiles(
          [line for line in lines if line and not line.startswith("#")],
          f"{where} ({value})", problems)
  return result


def _check_experiment(flag_values: list[tuple[str, str | None]], where: str,
                      problems: list[str]) -> None:
  """The experiment exists and its config files and overrides apply to it
  strictly (every key exists)."""
  values = {}
  for name, value in flag_values:
    values.setdefault(name, []).append(value)
  if "experiment" not in values:
    return
  experiment = values["experiment"][-1]
  try:
    params = exp_factory.get_exp_config(experiment)
  except (KeyError, LookupError, AssertionError):
    problems.append(f"{where}: experiment {experiment!r} is not registered")
    return
  for config_file in values.get("config_file", []):
    if not (ROOT / config_file).is_file():
      problems.append(f"{where}: config file {config_file} does not exist")
      continue
    try:
      params = hyperparams.override_params_dict(
          params, str(ROOT / config_file), is_strict=True)
    except (KeyError, ValueError) as e:
      problems.append(f"{where}: {config_file} does not apply to "
                      f"{experiment}: {e}")
  for override in values.get("params_override", []):
    try:
      hyperparams.override_params_dict(params, override, is_strict=True)
    except (KeyError, ValueError) as e:
      problems.append(f"{where}: --params_override={override} does not "
                      f"apply to {experiment}: {e}")


def _script_words(command: str) -> list[list[str]]:
  """The simple commands of `command` that run a project script, as
  [script, arguments...]."""
  result = []
  for words in _words(command):
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
      words = words[1:]  # Environment assignments before the command.
    if not words:
      continue
    if words[0] in _PYTHONS or words[0] == "bash":
      words = words[1:]
    if words and re.fullmatch(r"(scripts|custom_ops)/\S+\.(py|sh)",
                              words[0]):
      result.append(words)
  return result


def command_problems(command: str, where: str) -> list[str]:
  """What in `command` names something that does not exist ([] if
  nothing)."""
  problems = []
  for script, *args in _script_words(command):
    if not (ROOT / script).is_file():
      problems.append(f"{where}: {script} does not exist")
      continue
    if script == "scripts/run_tests.sh":
      markers = _pytest_markers()
      problems += [f"{where}: pytest marker {marker!r} is not in pytest.ini"
                   for flag, marker in zip(args, args[1:])
                   if flag == "-m" and marker not in markers]
      continue
    if script.endswith(".sh"):
      continue
    known = script_flags(script)
    flag_values = _flags_with_flagfiles(args, where, problems)
    for name, _ in flag_values:
      if name not in known and not (name.startswith("no")
                                    and name[2:] in known):
        problems.append(f"{where}: {script} has no flag --{name}")
    _check_experiment(flag_values, where, problems)
  return problems


def test_the_readme_has_the_two_commands():
  commands = shell_commands((ROOT / "README.md").read_text())
  assert "bash scripts/run_tests.sh" in commands
  assert "bash scripts/quickstart.sh" in commands


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_command_names_what_exists(document):
  problems = []
  for command in shell_commands((ROOT / document).read_text()):
    problems += command_problems(command, command[:60])
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command, expected", [
    ("python scripts/no_such_script.py --x=1", "does not exist"),
    ("python scripts/predict.py --no_such_flag=1", "has no flag --no_such_flag"),
    ("python scripts/train.py --flagfile=configs/missing.flags",
     "flag file configs/missing.flags does not exist"),
    ("python scripts/train.py --experiment=no_such_experiment",
     "is not registered"),
    ("python scripts/train.py --experiment=tensormask_shapes "
     "--config_file=configs/missing.yaml", "does not exist"),
    ("python scripts/train.py --experiment=tensormask_shapes "
     "--params_override=task.model.no_such_key=1", "does not apply"),
    ("python scripts/train.py --flagfile=configs/tensormask_shapes.flags "
     "--params_override=trainer.train_stepz=10", "does not apply"),
    ("bash scripts/run_tests.sh -m no_such_marker", "pytest marker"),
    ("python scripts/bench_model.py --no_such_argument 3", "has no flag"),
    ("ONEDNN_MAX_CPU_ISA=AVX2 python scripts/predict.py --no_such_flag",
     "has no flag"),
])
def test_a_rotten_command_is_reported(command, expected):
  problems = command_problems(command, "here")
  assert problems and expected in problems[0], problems


@pytest.mark.parametrize("command", [
    "python scripts/train.py --flagfile=configs/tensormask_shapes.flags "
    "--params_override=trainer.train_steps=10",
    "python scripts/predict.py --saved_model=m/1 --image='a/*.png' "
    "--output_dir=/tmp/p ...",
    "docker run --rm --no_such_flag tensorflow/serving",
    "bash scripts/run_tests.sh -m slow -x",
])
def test_a_sound_command_passes(command):
  assert command_problems(command, "here") == []
