"""The Docker Compose target: the same stack as the local target, in containers, from the same model and renderers."""
