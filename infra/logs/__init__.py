"""The stack's logs: one JSON line format for every component, written by the Prefect processes and the load
balancer, and read back (with the plain-text components' lines turned into the same fields) by ``invoke logs``."""
