#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian/Ubuntu host for the "local" target:
#   - the Debian packages the stack runs (PostgreSQL 15, PgBouncer, Redis, HAProxy, pgBackRest, Prometheus,
#     Alertmanager and the exporters),
#   - the unprivileged system user every stack process runs as (when run as root),
#   - the Python virtual environment (.venv) pinned by constraints.txt.
# Usage: scripts/bootstrap.sh [--dev]     (--dev adds the test and lint tools, docker.io, debootstrap,
#                                           docker-registry, ShellCheck)
# Running it twice changes nothing the second time.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: run as root, or install sudo and grant this user sudo rights."
  sudo_cmd=(sudo)
fi

# Debian packages, pinned to the distribution's release (bookworm): PostgreSQL 15 is what the stack is tested with.
# Monitoring: Prometheus (and promtool, which checks and unit-tests the rendered alert rules), Alertmanager
# (and amtool), node_exporter (the host and the backup textfile metrics), the PostgreSQL and Redis exporters.
packages=(postgresql-15 postgresql-contrib pgbouncer redis-server haproxy pgbackrest zstd python3-venv
          prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter
          prometheus-redis-exporter)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  # The stack runs its own PostgreSQL cluster; do not let the package create and start a second one on 5432.
  "${sudo_cmd[@]}" mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | "${sudo_cmd[@]}" tee /etc/postgresql-common/createcluster.d/prefect-stack.conf >/dev/null
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Package post-install scripts start their own daemons where an init system exists; the stack runs its own.
  for svc in pgbouncer redis-server haproxy prometheus prometheus-alertmanager prometheus-node-exporter \
             prometheus-postgres-exporter prometheus-redis-exporter; do
    "${sudo_cmd[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
else
  say "Debian packages present"
fi

# --dev: the test suite builds and runs the compose target's images. Debian's docker.io provides dockerd (the suite
# starts a private engine of its own when none answers) and debootstrap makes the Debian base image where no
# registry is reachable; docker-registry is the registry `invoke images.push` is tested against (the Kubernetes
# target pulls the images from one). No daemon is started here: the package's own services are stopped and disabled again.
# ShellCheck: invoke lint (and so invoke test) checks every shell script with it.
if [[ -n "$extras" ]]; then
  dev_missing=()
  for p in docker.io debootstrap docker-registry shellcheck; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || dev_missing+=("$p")
  done
  if ((${#dev_missing[@]})); then
    say "installing Debian packages for the tests: ${dev_missing[*]}"
    "${sudo_cmd[@]}" apt-get update -q
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${dev_missing[@]}"
    if [[ " ${dev_missing[*]} " == *" docker.io "* || " ${dev_missing[*]} " == *" docker-registry "* ]]; then
      for svc in docker.socket docker.service containerd.service docker-registry.service; do
        "${sudo_cmd[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
      done
    fi
  else
    say "Debian packages for the tests present"
  fi
fi

if [[ $(id -u) -eq 0 ]] && ! id prefect-stack >/dev/null 2>&1; then
  say "creating system user prefect-stack"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin prefect-stack
fi

# The virtual environment: one interpreter for the tasks and the Prefect processes, pinned by constraints.txt.
# Debian's own Python by default: the stack's processes run as an unprivileged user, who must be able to
# execute the interpreter (a per-user install such as pyenv under /root is not reachable to them).
python=${PYTHON:-/usr/bin/python3}
[[ -x "$python" ]] || die "no Python at $python: install python3 (Debian) or set PYTHON=/path/to/python3.11"
if [[ -x .venv/bin/python ]] && [[ "$(readlink -f .venv/bin/python)" != "$(readlink -f "$python")" ]]; then
  say "recreating .venv with $python"
  rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  say "creating virtual environment .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.bootstrap-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)${extras:+-dev}
if [[ ! -f "$stamp" ]]; then
  say "installing Python dependencies (pinned by constraints.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".${extras}"
  rm -f .venv/.bootstrap-*
  touch "$stamp"
else
  say "Python dependencies up to date"
fi
say "ready: .venv/bin/invoke --list"
