"""Backups of the Prefect database to S3, their verification, retention and restore. Target-neutral: the
same code runs from `invoke` on the local target, as a compose service command and as a Kubernetes CronJob."""
