"""Benchmarks and the crash-torture script, run by hand (``python -m benchmarks.bench_...``).

Never collected by pytest (``testpaths = ["tests"]``); see ``benchmarks/README.md``.
"""
