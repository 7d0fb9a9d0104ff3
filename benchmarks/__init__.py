"""Benchmarks of shared_memory_array against its peers: ``python -m benchmarks --help``.

``cli`` is the command line; ``config`` the sizes and counts of a run; ``harness``
what every section measures with (data, timing, repetitions, PSS, worker processes);
``peers`` the optional libraries compared; ``bench_share`` to ``bench_dropin`` the
sections a to g; ``report``, ``machine`` and ``targets`` write RESULTS.md.  What each
section measures, and how: README.md.
"""
