"""Readers of the layouts defect data comes in. Each turns a source folder into `SourceItem`s;
`data/importer.py` writes any of them as the KSDD2 layout, so nothing downstream knows a format.

A new format is one module with a `read(src, options) -> Scan` function and its row below.
"""

from __future__ import annotations

from collections.abc import Callable

from . import folder, ksdd1, mvtec, yolo_seg
from .common import FormatOptions, MaskFile, Scan, SourceItem

FORMATS: dict[str, Callable[..., Scan]] = {
    "yolo-seg": yolo_seg.read,
    "mvtec": mvtec.read,
    "folder": folder.read,
    "ksdd1": ksdd1.read,
}

__all__ = ["FORMATS", "FormatOptions", "MaskFile", "Scan", "SourceItem"]
