"""Foundations with no machine learning in them: the one error type (:class:`~dtcond.common.errors.DtcondError`),
atomic file writes, and keeping library chatter off the console.

Layer 1: may import nothing of dtcond (the layers below it; the package docstring lists them).
"""
