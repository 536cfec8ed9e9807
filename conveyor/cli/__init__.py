"""The ``conveyor`` command line (Typer + Rich)."""
