"""The project's own Prometheus exporter: what Prefect and PgBouncer do not expose themselves.

Prefect 3.8's /api/metrics has no flow-run, work-pool or event-pipeline metrics, and Debian's PgBouncer exporter
crashes against PgBouncer 1.18. Each collector here reads one source at scrape time with bounded queries and
never fails the whole scrape: a source it cannot read is reported through ``prefect_exporter_source_up``.
"""
