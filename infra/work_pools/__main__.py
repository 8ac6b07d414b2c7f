"""``python -m infra.work_pools <plan.json>``: provision pools and automations from a rendered plan, with the API
address and credentials of the environment (PREFECT_API_URL, PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE).

The Kubernetes target runs this as a Job after each deploy; local and compose call ``provision`` directly."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

from infra.errors import UserError
from infra.work_pools.provision import api_session, from_document, provision


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m infra.work_pools <plan.json>", file=sys.stderr)
        return 2
    try:
        pools, automations = from_document(json.loads(Path(argv[0]).read_text()))
        ca_file = os.environ.get("PREFECT_API_SSL_CERT_FILE")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        api = api_session(os.environ["PREFECT_API_URL"], os.environ.get("PREFECT_API_AUTH_STRING", ""), verify)
        for line in provision(api, pools, automations).lines():
            print(line, flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
