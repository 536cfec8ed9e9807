"""Benchmarks for Conveyor.

* ``python -m bench.throughput``: bulk enqueue, then drain with one worker (or several
  worker processes); reports jobs/s and write transactions (commits) per job.
* ``python -m bench.latency``: jobs submitted one at a time at a fixed rate to an idle
  worker; reports submit-to-start latency percentiles.

Both create a throwaway database (a temporary SQLite file, or a ``conveyor_bench_*``
PostgreSQL database that is dropped afterwards) and print a summary line followed by a
JSON line with the figures. Nothing here changes the product: commits are counted by
wrapping ``Database.write`` of the instances the benchmark opens.
"""
