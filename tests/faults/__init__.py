"""Reliability fault scenarios (docs: RELIABILITY.md sections 3.1 and 3.2).

Layout:

* ``ledger.py``: the execution ledger and the effect table (one SQLite file per test,
  ``LEDGER_PATH``), written by task code, read by tests and the oracle.
* ``app.py``: ``tests.faults.app:app``, tasks that write the ledgers (``effect_step``,
  ``effect_step_sync``, ``db_only_step``, ``spin_step``, ``spin_step_sync``).
* ``harness.py``: :class:`~tests.faults.harness.Fleet` (worker processes of the test,
  fault points armed per process with ``faults="point:action@N"``; only their own pids are
  signalled), :func:`~tests.faults.harness.inprocess_worker` (a real Worker in the test's
  event loop, for rescuers and finishers that cost no start-up),
  :class:`~tests.faults.harness.ClientLog` (every submit; the accepted jobs),
  :class:`~tests.faults.harness.FenceLog` (lease-loss lines of a worker's log),
  :func:`~tests.faults.harness.serve_api` (a real ``conveyor serve``), ``lease_view``,
  ``leases_of``, ``wait_for``, ``wait_terminal``, ``wait_exit_at``, ``report`` (figures).
* ``oracle.py``: :func:`~tests.faults.oracle.check`, the invariants after quiescence.
* ``conftest.py``: fixtures ``ledger``, ``client_log``, ``fleet``, ``fengine`` (plus
  ``db_url``/``db`` from tests/conftest.py: every test runs on SQLite and PostgreSQL).

A scenario: start workers (``fleet.spawn`` then ``await fleet.ready``), submit through
``client_log.submit(fengine, JobSpec(...))``, inject the fault, ``await wait_terminal``,
then ``oracle.check(db_url, client_log.accepted_ids(), fleet.ledger).assert_ok()`` and
``report("Rn", backend, "one-line summary", **figures)``.
"""
