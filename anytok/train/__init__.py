"""Training codecs from YAML recipes (see docs/training.md).

* :func:`train`: run a recipe (one process, or one rank under torchrun);
* :func:`run_from_cli` / :func:`export_from_cli`: the ``anytok train`` / ``anytok export``
  commands;
* :func:`export_run`: a run's (EMA) generator as a checkpoint ``anytok.load`` opens;
* :func:`load_recipe`: read and check a recipe with overrides.
"""

from anytok.train.cli import export_from_cli, run_from_cli
from anytok.train.config import Recipe, RecipeError, load_recipe
from anytok.train.export import export_run
from anytok.train.logger import read_log, scalar_history
from anytok.train.loop import TrainResult, train

__all__ = [
    "Recipe",
    "RecipeError",
    "TrainResult",
    "export_from_cli",
    "export_run",
    "load_recipe",
    "read_log",
    "run_from_cli",
    "scalar_history",
    "train",
]
