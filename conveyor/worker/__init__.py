"""Runs user code: the claim loop, concurrency, heartbeats, timeouts, cancellation and the
Context handed to task functions."""
