# ruff: noqa: E501 - the template holds HAProxy directives, which have no line continuation
"""haproxy.cfg: the load balancer in front of the API replicas.

Why each setting is there:
- health checks on /api/ready (503 when a replica cannot reach the database), fast down on a connection error;
- ``retry-on`` + ``option redispatch``: a request that found its replica dead (refused, or closed before any
  response) is sent again to another replica, so a replica dying mid-request costs the client nothing.
  Only failures where no response was received are retried; a slow replica is never retried (no
  response-timeout), which bounds double execution to requests the dead replica may have committed before
  dying. Clients that create objects pass Prefect's idempotency keys to make those safe too;
- ``http-buffer-request``: L7 retries need the whole request body held by HAProxy;
- ``timeout tunnel``: websockets (/api/events/in, /api/events/out, /api/logs/out) stay open while idle;
- a separate stats listener with the stats page (basic auth) and the Prometheus exporter;
- with monitoring on, a metrics-only listener (monitoring.api_metrics_port) through which Prometheus scrapes each
  replica: Prefect takes a single auth string (the admin's), so Prometheus authenticates here with a credential of
  its own (userlist, secret ``prometheus_scrape``), may only ``GET /api-N/metrics``, and HAProxy adds the admin's
  Authorization header on the way to replica N's /api/metrics. Prometheus never holds the admin credential;
- TLS (load_balancer.tls): the API frontend, and the stats listener when it is not on loopback, serve the
  certificates of infra/tls.py (``etc/lb-tls.pem``, and the operator's by SNI); TLS 1.2 at least, forward-secret
  AEAD ciphers only (Mozilla's "intermediate" profile without DHE, which would need DH parameters), HTTP/1.1 over
  ALPN (websockets need it);
- a request id on every API request (``X-Request-ID``): a client's own is kept when it is one well-formed value
  (at most 128 of ``[A-Za-z0-9._-]``: anything else could forge log lines), else a random UUID replaces it. The
  replica receives it and logs it with its own line for the request (infra.logs.request_id);
- logs (logs.format json): one JSON object per line on stdout in the common line format (infra.logs.fields) with
  the request's method, path, status, replica, timers and termination state; text keeps HAProxy's own httplog
  lines. At logs.levels.haproxy WARNING or ERROR only failed requests are logged (``dontlog-normal``).
"""

from __future__ import annotations

import base64

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.logs import fields
from infra.render import Addresses, RenderedFile
from infra.secrets import Secrets

BACKEND = "prefect_api"
# The metrics-only listener: Prometheus's user there, and the path that reaches replica N's /api/metrics.
SCRAPE_USER = "prometheus"
SCRAPE_USERLIST = "prometheus_scrape"
# Under the rendered-files directory: the certificate chains and keys HAProxy serves (secrets), and the deployment's
# CA, which the stack's own processes and invoke env's clients trust (not a secret).
TLS_PEM = "lb-tls.pem"
OPERATOR_TLS_PEM = "lb-tls-operator.pem"  # load_balancer.tls.cert_file and key_file, served by SNI for their names
_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


# A client's request id is kept only when it is one value of this shape (HAProxy regex, anchored).
CLIENT_REQUEST_ID = r"^[A-Za-z0-9._-]{1,128}$"
# The JSON line, one key per common field and a few of HAProxy's own. Values are HAProxy log-format expressions;
# strings a client chooses go through the json converter (escaping). ``time`` is when the line is written, as for
# every other component (``date`` and ``date_us`` come from one clock reading; the milliseconds are zero-padded by
# adding 1000 and dropping the leading 1). A field HAProxy cannot fill (a request it could not parse) reads "-".
# The level comes from a session variable the frontends set from each response's status (5xx: ERROR).
_JSON_LINE: tuple[tuple[str, str], ...] = (
    (fields.TIME, '"%[date,utime(%Y-%m-%dT%H:%M:%S)].%[date_us,div(1000),add(1000),regsub(^1,)]Z"'),
    (fields.LEVEL, '"%[var(sess.log_level,INFO)]"'),
    (fields.COMPONENT, '"haproxy"'),
    (fields.MESSAGE, '"%[capture.req.method,json(utf8s)] %[capture.req.uri,field(1,?),json(utf8s)] %ST"'),
    (fields.REQUEST_ID, '"%[var(txn.request_id)]"'),
    ("method", '"%[capture.req.method,json(utf8s)]"'),
    ("path", '"%[capture.req.uri,field(1,?),json(utf8s)]"'),
    ("status", "%ST"),
    ("frontend", '"%f"'),
    ("backend", '"%b"'),
    ("server", '"%s"'),
    ("client", '"%ci"'),
    ("client_port", "%cp"),
    # HAProxy's timers (ms; -1: that step never happened): receive the request, queue, connect, response
    # headers, and the request's whole active time.
    ("TR", "%TR"),
    ("Tw", "%Tw"),
    ("Tc", "%Tc"),
    ("Tr", "%Tr"),
    ("duration_ms", "%Ta"),
    ("bytes_read", "%B"),
    ("bytes_uploaded", "%U"),
    # A string: HAProxy prefixes the count with "+" when the request went to another replica ("+1"), which is not
    # a JSON number.
    ("retries", '"%rc"'),
    # Why the request ended: "----" normal; e.g. "SC--" the replica refused, "CD--" the client went away.
    ("termination_state", '"%tsc"'),
)
JSON_LOG_FORMAT = "'{" + ",".join(f'"{key}":{value}' for key, value in _JSON_LINE) + "}'"


# The planned maintenance window's map (etc/) and its one key; the body Prefect's clients log while they wait.
MAINTENANCE_MAP = "haproxy-maintenance.map"
MAINTENANCE_KEY = "window"
MAINTENANCE_BODY = ('{"detail": "Planned maintenance of the Prefect server (a deploy is migrating or restarting the '
                    'database); retry after the Retry-After header"}')

# In every HTTP frontend: the level of the request's line, set from the status of each response HAProxy sends (its
# own error pages included). The variable lives as long as the connection: a request that ends without a response
# (the client went away) finds it reset by the request rule, unless a rule before it answered.
_LOG_LEVEL_RULES = """\
    http-request set-var(sess.log_level) str(INFO)
    http-after-response set-var(sess.log_level) str(ERROR) if { status ge 500 }
    http-after-response set-var(sess.log_level) str(INFO) unless { status ge 500 }"""

# In the API frontend: the request id (see the module's docstring), kept in a variable for the log line.
_REQUEST_ID_RULES = f"""\
    unique-id-format %[uuid()]
    acl client_request_id req.fhdr({fields.REQUEST_ID_HEADER}) -m reg {CLIENT_REQUEST_ID}
    http-request set-var(txn.request_id) req.fhdr({fields.REQUEST_ID_HEADER}) if {{ req.fhdr_cnt({fields.REQUEST_ID_HEADER}) eq 1 }} client_request_id
    http-request set-var(txn.request_id) unique-id unless {{ var(txn.request_id) -m found }}
    http-request set-header {fields.REQUEST_ID_HEADER} %[var(txn.request_id)]"""


def server_name(replica: int) -> str:
    return f"api-{replica}"


def replica_metrics_path(replica: int) -> str:
    """Where Prometheus asks the metrics listener for replica ``replica``'s /api/metrics."""
    return f"/{server_name(replica)}/metrics"


def _basic_auth_header(auth_string: str) -> str:
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


def _api_metrics_listener(config: StackConfig, secrets: Secrets, addresses: Addresses, tls: str,
                          resolve: str) -> str:
    """The metrics-only frontend and one backend per replica (so each replica stays its own scrape target; no
    health check, no redispatch: a replica that is down answers 503 and its target shows down, as it is)."""
    replicas = range(1, config.api.replicas + 1)
    paths = " ".join(replica_metrics_path(i) for i in replicas)
    routes = "\n".join(f"    use_backend api_metrics_{i} if {{ path {replica_metrics_path(i)} }}" for i in replicas)
    # Sent only toward the replicas, and replacing whatever Authorization the request came with.
    admin = _basic_auth_header(secrets.get("prefect_auth"))
    backends = "\n".join(f"""
backend api_metrics_{i}
    no option redispatch
    retries 0
    http-request set-path /api/metrics
    http-request set-header Authorization "{admin}"
    server {server_name(i)} {addresses.api_host(i)}:{config.api_port(i)}{resolve}""" for i in replicas)
    # A plain password, as the stats page's: the file is private (0600), holds the admin credential anyway, and a
    # crypt() hash would cost a hashing round per scrape.
    return f"""
userlist {SCRAPE_USERLIST}
    user {SCRAPE_USER} insecure-password {secrets.get("prometheus_scrape")}

frontend api_metrics
    bind {addresses.bind(addresses.load_balancer)}:{config.monitoring.api_metrics_port}{tls}
    option dontlog-normal
    acl scraper http_auth({SCRAPE_USERLIST})
    acl replica_metrics path {paths}
    http-request auth realm prometheus-scrape unless scraper
    http-request deny deny_status 405 unless {{ method GET }}
    http-request deny deny_status 404 unless replica_metrics
    # Never forward Prometheus's own credential, whatever the backend.
    http-request del-header Authorization
{_LOG_LEVEL_RULES}
{routes}
{backends}
"""


def _log_settings(config: StackConfig) -> str:
    """The defaults section's logging lines: the line format, and whether requests that went well are logged."""
    line = f"log-format {JSON_LOG_FORMAT}" if config.logs.format == "json" else "option httplog"
    if config.logs.levels.haproxy in ("WARNING", "ERROR"):
        line += "\n    option dontlog-normal"
    return line


def maintenance_map(layout: StateLayout) -> RenderedFile:
    """The map HAProxy reads the maintenance flag from: empty on disk (no window survives a restart of HAProxy;
    the deploy that opened it opens it again), filled at run time through the admin socket."""
    return RenderedFile(layout.etc / MAINTENANCE_MAP, "# the maintenance window's flag, set at run time\n")


def haproxy_cfg(config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses) -> RenderedFile:
    lb = config.load_balancer
    # The first certificate is HAProxy's default (clients without SNI: IP addresses); the operator's is chosen by
    # SNI for the names it carries.
    operator = f" crt {layout.etc / OPERATOR_TLS_PEM}" if lb.tls.cert_file is not None else ""
    tls = f" ssl crt {layout.etc / TLS_PEM}{operator} alpn http/1.1"
    api_tls = tls if config.tls_enabled else ""
    stats_tls = tls if config.stats_tls_enabled else ""
    servers = []
    # With a resolver, a name that does not resolve yet (container not created) still starts HAProxy.
    resolve = " resolvers runtime init-addr last,libc,none" if addresses.dns_resolver else ""
    for i in range(1, config.api.replicas + 1):
        host = addresses.api_host(i)
        servers.append(f"    server {server_name(i)} {host}:{config.api_port(i)} check{resolve}")
    resolvers = f"""
resolvers runtime
    nameserver dns {addresses.dns_resolver}
    hold valid 1s
    hold obsolete 1s
    timeout resolve 1s
    timeout retry 1s
""" if addresses.dns_resolver else ""
    text = f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
global
    master-worker
    maxconn 4096
    log stdout format raw local0 info
    stats socket {layout.haproxy_socket} mode 600 level admin expose-fd listeners
    stats timeout 30s
    ssl-default-bind-ciphers {_CIPHERS}
    ssl-default-bind-ciphersuites {_CIPHERSUITES}
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

defaults
    mode http
    log global
    {_log_settings(config)}
    option dontlognull
    option forwardfor
    timeout connect 2s
    timeout client {lb.timeout_server_s}s
    timeout server {lb.timeout_server_s}s
    timeout http-request 10s
    # Shorter than the replicas' keep-alive (api.keepalive_timeout, validated longer), so HAProxy never
    # reuses a connection the replica is closing.
    timeout http-keep-alive 10s
    timeout queue 30s
    # A replica answering its health check slowly is busy, not dead (dead ones refuse connections, which marks them
    # down at once). Under a burst, one replica doing the work of two answered /api/ready in over a second; with
    # the check timeout at its default (inter, 1 s) both were marked down together and clients got 503s.
    timeout check 5s
    timeout tunnel {lb.timeout_tunnel_s}s
    retries {lb.retries}
    option redispatch 1
    retry-on conn-failure empty-response junk-response
    option http-buffer-request

frontend prefect
    bind {addresses.bind(lb.bind_address)}:{lb.port}{api_tls}
    http-request set-header X-Forwarded-Proto {"https" if api_tls else "http"}
{_REQUEST_ID_RULES}
{_LOG_LEVEL_RULES}
    # A planned maintenance window (infra.haproxy_runtime.maintenance_window puts the key in the map at run time):
    # every request is answered the way Prefect's clients wait out without counting it as a retry.
    acl maintenance str({MAINTENANCE_KEY}),map({layout.etc / MAINTENANCE_MAP}) -m found
    http-request return status 503 content-type application/json string '{MAINTENANCE_BODY}' hdr Prefect-Maintenance true hdr Retry-After {lb.maintenance_retry_after_s} if maintenance
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    option httpchk GET /api/ready
    http-check expect status 200
    # A connection error marks a replica down at once; a replica coming back is checked every 250-500 ms and
    # serves again after 2 good checks (a restore or restart is over sooner for clients).
    default-server inter 1s fastinter 250ms downinter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
{chr(10).join(servers)}
{resolvers}
frontend stats
    bind {addresses.bind(lb.bind_address)}:{lb.stats_port}{stats_tls}
{_LOG_LEVEL_RULES}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 10s
    stats auth {secrets.get("haproxy_stats")}
"""
    if config.monitoring.enabled:
        text += _api_metrics_listener(config, secrets, addresses, stats_tls, resolve)
    if config.backups.physical.enabled and config.backups.s3.endpoint_url is None:
        # pgBackRest speaks only HTTPS to S3: TLS in front of the local (plain HTTP) endpoint.
        text += f"""
frontend s3_tls
    bind 127.0.0.1:{config.backups.physical.tls_port} ssl crt {layout.etc / "s3-tls.pem"}
{_LOG_LEVEL_RULES}
    timeout client 300s
    default_backend s3_local

backend s3_local
    timeout server 300s
    server s3 127.0.0.1:{config.backups.s3.local_port}
"""
    return RenderedFile(layout.etc / "haproxy.cfg", text, secret=True)
