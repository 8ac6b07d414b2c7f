"""The Docker Compose target: the project's images, the engine that runs them, and (elsewhere) the compose project."""
