#!/usr/bin/env bash
# Set up a virtual environment (first run only) and run the tool or its tests.
#   ./dev.sh run [FILE] [stemcluster segment options]   segment FILE (default: bundled sample)
#   ./dev.sh test [pytest options]                      run the test suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${STEMCLUSTER_VENV:-.venv}

system_packages() {
    # napari needs an X server with OpenGL for its GUI tests; Xvfb provides it.
    local pkgs=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
        libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
        libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    # Reinstall when the package metadata changed since the last install.
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q -e ".[testing]"
        touch "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        python_env
        exec "$VENV/bin/stemcluster" segment "$@"
        ;;
    test)
        system_packages
        python_env
        exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [FILE] [options] | ./dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
