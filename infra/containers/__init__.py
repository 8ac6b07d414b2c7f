"""What the container targets (compose and Kubernetes) share: the project's images, the container entrypoint and
the one-shot migration step run in a container."""
