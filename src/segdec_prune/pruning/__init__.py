"""Structured channel pruning of SegDecNet: criteria, the method table, surgery."""
