#!/usr/bin/env bash
# Creates (idempotently) the virtualenv that runs localstripe + compat.py.
#
#   tests/it/support/localstripe/setup.sh        -> last stdout line: <venv>/bin/python
#
# The venv lives in <repo>/.tools/localstripe-venv (git-ignored). A stamp file
# holds a hash of requirements.txt and the interpreter version; when it matches,
# nothing is done. Safe to run concurrently (flock). Everything except the final
# path goes to stderr.
#
# Environment:
#   LOCALSTRIPE_VENV    venv directory (default <repo>/.tools/localstripe-venv)
#   LOCALSTRIPE_PYTHON  interpreter used to create it (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
venv="${LOCALSTRIPE_VENV:-$repo/.tools/localstripe-venv}"
base_python="${LOCALSTRIPE_PYTHON:-python3}"
req="$here/requirements.txt"
stamp="$venv/.paybridge-requirements.sha256"

mkdir -p "$(dirname "$venv")"

want="$({ "$base_python" -c 'import sys; print(sys.version)'; cat "$req"; } | sha256sum | cut -d' ' -f1)"

is_ready() {
    [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$venv/bin/python" -c 'import localstripe, aiohttp' >/dev/null 2>&1
}

if ! is_ready; then
    exec 9>"$venv.lock"
    flock 9
    # Another process may have finished the job while we waited for the lock.
    if ! is_ready; then
        echo "localstripe setup: creating $venv" >&2
        rm -f "$stamp"
        "$base_python" -m venv --clear "$venv" >&2
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            -r "$req" >&2
        "$venv/bin/python" -c 'import localstripe, aiohttp' >&2
        echo "$want" >"$stamp"
        echo "localstripe setup: done" >&2
    fi
    flock -u 9
fi

echo "$venv/bin/python"
