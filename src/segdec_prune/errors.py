"""The errors a user must fix, in a module that imports nothing heavy: the CLI names them in its
one-line error mapping before torch or OpenCV is loaded (a refused second writer answers at once)."""


class DatasetError(ValueError):
    """A data set problem a user must fix; the message names the file."""


class CheckpointError(ValueError):
    """The file is not a usable SegDecNet checkpoint; the message says why."""
