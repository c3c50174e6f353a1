"""`segdec-prune`: one subcommand per pipeline stage, plus `run`, `predict` and `bundle`.

Each module registers its commands on the one typer `app` (common.py) when imported here.
"""

from .common import app
# Imported in the order `segdec-prune --help` lists them: the pipeline's order.
from . import data, models, deploy, ship, run  # noqa: E402, F401, I001  (registers the commands)


__all__ = ["app"]
