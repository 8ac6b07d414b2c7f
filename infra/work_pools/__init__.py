"""Work pools as code: the pools, queues and automations a deploy provisions through Prefect's API.

``templates`` computes each pool's base job template from the model (and checks it before anything changes),
``automations`` the two automations that make dead runs visible and run them again, ``provision`` applies both
idempotently. Every target calls the same code: local and compose from the deploying host through the load
balancer, Kubernetes from a Job in the cluster (``python -m infra.work_pools``).
"""
