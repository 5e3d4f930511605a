# Shared by scripts/test and scripts/dev: installs the project's tools into git-ignored folders
# under .tools/ (cached for the next run). Expects ROOT and TOOLS, and the functions step, warn
# and die, to be defined by the caller.

# The localstripe virtualenv (tests/support/localstripe/setup.sh); exports
# PAYBRIDGE_TEST_LOCALSTRIPE_PYTHON.
setup_localstripe() {
    local setup=tests/support/localstripe/setup.sh
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
