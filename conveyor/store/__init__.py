"""Persistence: tables, the Database (one transaction = one sync function), dialect hooks
for SQLite and PostgreSQL, and migrations."""
