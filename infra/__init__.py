"""prefect-stack: deploy, operate, back up and restore a highly available Prefect 3 server."""
