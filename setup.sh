#!/usr/bin/env bash
# Set up akd-mobile on a fresh Debian machine: the Debian packages it uses, a virtual
# environment in .venv with the CPU build of torch, and the package (editable, with its
# test extras). Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing+=(dataset-fashion-mnist)
command -v adb >/dev/null 2>&1 || missing+=(adb)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the headless browser of the report's test
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pip's notes about unreadable local index folders are noise; its exit status is kept.
pip_install() {
    .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored" || true; }
}

[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=.venv/.akd-mobile-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "setup: installing Python packages into .venv (about 2.5 GB the first time)"
    # The pin keeps pip on the CPU wheel; a looser torch requirement pulls a CUDA build.
    pip_install torch==2.13.0
    pip_install -e ".[test]"
    echo "$want" > "$stamp"
fi
