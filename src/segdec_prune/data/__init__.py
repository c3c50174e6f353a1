"""KSDD2 data: the real on-disk layout, a synthetic generator, and the official download."""
