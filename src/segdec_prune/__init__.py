"""segdec-prune: train, prune, deploy and evaluate SegDecNet on KolektorSDD2."""

__version__ = "0.1.0"
