"""The one-shot migration step, run before any API replica starts: schema upgrade, then block registration.

Replicas run with migrations and block registration off; doing both once here is what lets any number of
replicas start at the same moment on a fresh database. Run as ``python -m infra.database.migrate`` with the
migration environment (a direct PostgreSQL connection).
"""

from __future__ import annotations

import asyncio
import json
import sys


async def _migrate() -> dict[str, str]:
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    db = provide_database_interface()
    await db.create_db()  # alembic upgrade to head; a no-op on a current schema
    session = await db.session()
    async with session:
        await run_block_auto_registration(session=session)
    async with await db.session() as session:
        from sqlalchemy import text

        revision = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    import prefect

    return {"prefect_version": prefect.__version__, "alembic_revision": str(revision)}


def main() -> int:
    result = asyncio.run(_migrate())
    # The last line of output is machine-readable; deploy records it.
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
