"""`python -m segdec_prune.cli`: the same as the `segdec-prune` console script."""

from . import app

app()
