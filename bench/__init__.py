"""Benchmarks for Conveyor.

* ``python -m bench.throughput``: bulk enqueue, then drain with one worker (or several
  worker processes); reports jobs/s and write transactions (commits) per job.
* ``python -m bench.latency``: jobs submitted one at a time at a fixed rate to an idle
  worker; reports submit-to-start latency percentiles.
* ``python -m bench.dag``: one ad-hoc workflow execution (a fan-out of no-op steps plus a
  join, or a chain) run by one in-process worker; reports the time from
  ``start_execution`` to the completing commit, and the overhead per step.
* ``python -m bench.api``: a real ``conveyor serve`` process driven over HTTP; reports
  submissions/s, job reads/s and submit-to-start latency through the API.

Each creates a throwaway database (a temporary SQLite file, or a ``conveyor_bench_*``
PostgreSQL database that is dropped afterwards) and prints a summary line followed by a
JSON line with the figures. Nothing here changes the product: commits are counted by
wrapping ``Database.write`` of the instances the benchmark opens.
"""
