"""Benchmarks of the event store (figures, not pass/fail).

``python -m bench`` runs every benchmark, ``python -m bench appends`` (or ``replay``) one of them.
Each prints our figure, the peer's figure measured in the same run, and the ratio.
See ``docs/benchmarks.md`` for the recorded results.
"""
