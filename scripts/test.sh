#!/usr/bin/env bash
# Runs the whole test suite, the README's command and CI's (.ci/run calls it):
#
#   1. set-up: what the suite needs beyond Python and Node (chromium, nginx, prometheus, podman,
#      runc, debootstrap, the PostgreSQL and Redis servers, node and npm) is installed with apt-get
#      when this runs as root, and PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are
#      started when they do not answer. When something is missing and cannot be installed, the run
#      stops here with ONE line naming what to install. Then ATOM_REQUIRE_SERVERS=1: no test may
#      skip (a would-be skip fails; tests/conftest.py).
#   2. the virtualenv (.venv) with the test dependencies, the SDK's devDependencies (npm ci when
#      clients/js's lock file changed);
#   3. the import layers (lint-imports), pytest (extra arguments go to pytest: `-m "not slow"`
#      runs the quick part), then the SDK's type check and `node --test` suite.
#
#   bash scripts/test.sh --setup-only     # step 1 alone (tests/test_setup.py runs it)
#
# Fails when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# -- 1. set-up -------------------------------------------------------------------------------------
# tool=Debian package; a tool counts as present on PATH or in /usr/sbin (nginx, for a non-root PATH).
TOOLS="chromium=chromium nginx=nginx prometheus=prometheus promtool=prometheus podman=podman
runc=runc debootstrap=debootstrap redis-server=redis-server redis-cli=redis-server
pg_isready=postgresql-client node=nodejs npm=npm"

missing_tools() {
    local entry tool
    for entry in $TOOLS; do
        tool=${entry%%=*}
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || printf '%s ' "$entry"
    done
    # The throwaway PostgreSQL servers of the tests are made with initdb and pg_ctl.
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || printf '%s ' "initdb=postgresql"
}

can_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}

packages_of() {   # "tool=package ..." -> "package ..." (each once)
    local entry
    for entry in $1; do echo "${entry#*=}"; done | sort -u | tr '\n' ' '
}

setup() {
    local missing
    missing=$(missing_tools)
    if [ -n "$missing" ] && can_install; then
        echo "scripts/test.sh: installing what the suite needs: $(packages_of "$missing")" >&2
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2046
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(packages_of "$missing") >/dev/null
        missing=$(missing_tools)
    fi
    if [ -n "$missing" ]; then
        local tools="" entry
        for entry in $missing; do tools="$tools ${entry%%=*}"; done
        echo "scripts/test.sh: missing${tools}: install them (apt-get install $(packages_of "$missing" | sed 's/ $//')), or run this as root, which installs them" >&2
        return 1
    fi
    # The machine's PostgreSQL and Redis, which many tests use (a database or a namespace each).
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432 && [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
    for _ in $(seq 50); do
        pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    pg_isready -q -h 127.0.0.1 -p 5432 || {
        echo "scripts/test.sh: PostgreSQL does not answer on 127.0.0.1:5432 (trust auth, user postgres): start it, or run this as root, which starts it" >&2
        return 1
    }
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || {
        echo "scripts/test.sh: Redis does not answer on 127.0.0.1:6379: start it, or run this as root, which starts it" >&2
        return 1
    }
}

setup || exit 1
export ATOM_REQUIRE_SERVERS=1
if [ "${1:-}" = "--setup-only" ]; then
    echo "scripts/test.sh: set-up done: every tool and server the suite needs is here"
    exit 0
fi

# -- 2. the environments ---------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
# The SDK's devDependencies (typescript, ws), exactly as package-lock.json pins them. Before pytest:
# the chaos run's load client is the SDK's (clients/js/tools/loadclient.js).
if [ ! -f clients/js/node_modules/.package-lock.json ] \
        || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then
    (cd clients/js && npm ci --no-audit --no-fund --silent)
fi

# -- 3. the tests ----------------------------------------------------------------------------------
status=0
# The import layers of pyproject.toml: a module that imports from a layer above its own fails the run.
layers=$(.venv/bin/lint-imports --no-cache 2>&1) || { echo "$layers"; status=1; }
.venv/bin/python -m pytest "$@" || status=$?

echo "scripts/test.sh: clients/js: tsc --noEmit, then node --test"
(cd clients/js && npx --no-install tsc --noEmit -p . \
    && ATOM_PYTHON="$PWD/../../.venv/bin/python" node --test --test-concurrency=1 test/) || status=$?
exit "$status"
