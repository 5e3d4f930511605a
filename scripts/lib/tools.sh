# Shared by scripts/test and scripts/dev: installs the project's tools into git-ignored folders
# under .tools/ (cached for the next run). Expects ROOT and TOOLS, and the functions step, warn
# and die, to be defined by the caller.

# The localstripe virtualenv (tests/it/support/localstripe/setup.sh); exports
# PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON.
setup_localstripe() {
    local setup=tests/it/support/localstripe/setup.sh
    step "Setting up localstripe ($setup)"
    # setup.sh prints the virtualenv's python on its last line: show its output as it goes and
    # keep that line.
    mkdir -p "$TOOLS"
    bash "$setup" | tee "$TOOLS/localstripe-setup.out" >&2 || die "$setup failed"
    local python
    python=$(tail -n 1 "$TOOLS/localstripe-setup.out")
    [[ -x $python ]] || die "$setup did not print a python path on its last line (got: '$python')"
    export PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON=$python
    printf 'PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON=%s\n' "$PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON" >&2
}

# buf, from the npm package pinned in tools/package.json and tools/package-lock.json, into
# .tools/node; redone only when one of the three committed files changes. Exports
# PAYBRIDGE_TEST_BUF and puts buf on PATH.
install_buf() {
    step "Installing buf (tools/package.json -> .tools/node)"
    local node_tools=$TOOLS/node f current=1
    for f in package.json package-lock.json .npmrc; do
        cmp -s "tools/$f" "$node_tools/$f" || current=0
    done
    [[ -x $node_tools/node_modules/.bin/buf ]] || current=0
    if [[ $current == 1 ]]; then
        echo "cached" >&2
    else
        rm -rf "$node_tools"
        mkdir -p "$node_tools"
        cp tools/package.json tools/package-lock.json tools/.npmrc "$node_tools/"
        npm ci --prefix "$node_tools" --no-audit --no-fund --loglevel=warn \
            || die "npm ci for tools/package.json failed"
    fi
    export PAYBRIDGE_TEST_BUF=$node_tools/node_modules/.bin/buf
    export PATH=$node_tools/node_modules/.bin:$PATH
    "$PAYBRIDGE_TEST_BUF" --version >/dev/null || die "buf does not run: delete .tools/node and retry"
    printf 'buf %s\n' "$("$PAYBRIDGE_TEST_BUF" --version)" >&2
}

# A virtualenv under .tools/ from a pinned requirements file, redone only when that file or the
# interpreter changes (a stamp holds their hash). Safe to run concurrently (flock).
#   make_venv DIR REQUIREMENTS CHECK_COMMAND...   (CHECK_COMMAND runs with the venv's bin first on PATH)
make_venv() {
    local venv=$1 req=$2 want stamp
    shift 2
    stamp=$venv/.paybridge-requirements.sha256
    want=$({ python3 -c 'import sys; print(sys.version)'; cat "$req"; } | sha256sum | cut -d' ' -f1)
    mkdir -p "$(dirname "$venv")"
    (
        flock 9
        if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]] \
            && PATH=$venv/bin:$PATH "$@" >/dev/null 2>&1; then
            echo "cached ($venv)" >&2
            exit 0
        fi
        echo "creating $venv from $req" >&2
        rm -f "$stamp"
        python3 -m venv --clear "$venv" >&2 || exit 1
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2 \
            || exit 1
        PATH=$venv/bin:$PATH "$@" >&2 || exit 1
        echo "$want" >"$stamp"
    ) 9>"$venv.lock"
}

# The chart's test tools: .tools/helm-venv (helm-python-sdk, kubernetes-validate, pytest, from
# tests/helm/requirements.txt) and .tools/checkov-venv (checkov, from
# tests/helm/checkov-requirements.txt; its own venv because its pins clash with pytest's).
# Exports PAYBRIDGE_TEST_HELM_PYTHON and PAYBRIDGE_TEST_CHECKOV.
setup_helm_tools() {
    step "Setting up the Helm chart's test tools (tests/helm/*requirements.txt -> .tools/)"
    command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3.11 or newer"
    make_venv "$TOOLS/helm-venv" tests/helm/requirements.txt \
        python -c 'import helm_python, kubernetes_validate, pytest, yaml' \
        || die "could not set up $TOOLS/helm-venv (tests/helm/requirements.txt)"
    make_venv "$TOOLS/checkov-venv" tests/helm/checkov-requirements.txt \
        checkov --version \
        || die "could not set up $TOOLS/checkov-venv (tests/helm/checkov-requirements.txt)"
    export PAYBRIDGE_TEST_HELM_PYTHON=$TOOLS/helm-venv/bin/python
    export PAYBRIDGE_TEST_CHECKOV=$TOOLS/checkov-venv/bin/checkov
    printf 'PAYBRIDGE_TEST_HELM_PYTHON=%s\nPAYBRIDGE_TEST_CHECKOV=%s\n' \
        "$PAYBRIDGE_TEST_HELM_PYTHON" "$PAYBRIDGE_TEST_CHECKOV" >&2
}
