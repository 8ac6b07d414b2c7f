"""The local target: the stack as real processes on this host, under supervisord."""
