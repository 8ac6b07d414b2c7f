"""Benchmarks: measured numbers about a real, temporary deployment on this host, never about the operator's stack.

Each benchmark deploys what it measures on free loopback ports in its own directory under /tmp, and removes it
afterwards, whatever happened. Results are numbers for an operator to read, not pass/fail tests. What the
benchmarks share (that directory, free ports, the temporary stack, credentials, clean-up, verdicts) is
``infra.bench.harness``.
"""
