"""Benchmarks: HandlerConsul against python-consul2, the bare transport and wrk.

Run with ``scripts/bench`` (see ``scripts/bench --help`` and bench/README.md). Every contender
runs against one real local dev agent that the bench starts itself, interleaved round by
round, so that ratios hold on a noisy machine.
"""
