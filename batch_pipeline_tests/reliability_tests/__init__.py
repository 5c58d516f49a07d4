"""Reliability suite: crashes, Batch API faults, concurrency, bad input, secrets, hardening.

Run it alone with `pytest -m reliability`; the session ends with a line of figures.
"""
