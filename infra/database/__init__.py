"""PostgreSQL administration (cluster, roles, database, grants) and the one-shot schema migration, shared by
every target."""
