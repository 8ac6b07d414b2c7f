"""The Kubernetes target: manifests rendered from the one configuration model, and kubectl-driven deploys.

A sibling of ``infra/local`` and ``infra/compose`` over the same renderers: CloudNativePG for PostgreSQL, Redis
with Sentinel, the Prefect API and background services as Deployments, the same alert rules and dashboards as
prometheus-operator resources.
"""
