#!/usr/bin/env bash
# Runs the whole test suite: makes the virtualenv and installs the project with its test
# dependencies when needed, checks the import layers (lint-imports), then runs pytest (extra
# arguments go to pytest), then the JavaScript SDK's type check and its tests (clients/js,
# `node --test` against real `atom serve` processes). Fails when any of them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
status=0
# The import layers of pyproject.toml: a module that imports from a layer above its own fails the run.
layers=$(.venv/bin/lint-imports --no-cache 2>&1) || { echo "$layers"; status=1; }
.venv/bin/python -m pytest "$@" || status=$?

command -v node >/dev/null && command -v npm >/dev/null \
    || { echo "scripts/test.sh: node and npm are needed for clients/js's tests" >&2; exit 1; }
# The SDK's devDependencies (typescript, ws), exactly as package-lock.json pins them.
if [ ! -f clients/js/node_modules/.package-lock.json ] \
        || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then
    (cd clients/js && npm ci --no-audit --no-fund --silent)
fi
echo "scripts/test.sh: clients/js: tsc --noEmit, then node --test"
(cd clients/js && npx --no-install tsc --noEmit -p . \
    && ATOM_PYTHON="$PWD/../../.venv/bin/python" node --test --test-concurrency=1 test/) || status=$?
exit "$status"
