#!/usr/bin/env bash
# Set up a virtual environment (first run only), then run the tool or its tests.
#   ./dev.sh run [FILE] [stemcluster segment options]   segment FILE (default: bundled sample)
#   ./dev.sh demo [-o DIR]                              sample + results + overview picture
#   ./dev.sh info FILE [--scan-shape RX,RY]             what a file holds
#   ./dev.sh stemcluster ARGS...                        any stemcluster command
#   ./dev.sh napari [FILES...]                          napari with the plugin
#   ./dev.sh test [pytest options]                      run the test suite (under Xvfb)
# FILE, -o and every other path are relative to the folder you run it from.
set -euo pipefail
HERE=$(pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${STEMCLUSTER_VENV:-$REPO/.venv}
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac

say() { echo "dev.sh: $*" >&2; }

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
        say "installing ${#missing[@]} system packages for napari's GUI tests (apt-get)..."
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "first run: creating the virtual environment $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    # Reinstall when the package metadata changed since the last install.
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
        say "installing napari-stemcluster and its dependencies (numpy, numba, h5py, dask,"
        say "napari with PyQt6, pytest, ruff) into $VENV; the first time takes a few minutes..."
        # one line per package downloaded, so the wait is visible
        "$VENV/bin/pip" install -e "$REPO[testing]" 2>&1 |
            while IFS= read -r line; do
                case "$line" in
                    Collecting* | Successfully* | ERROR* | error*) echo "  $line" >&2 ;;
                    "Installing collected packages:"*)
                        n=$(($(tr -cd , <<<"$line" | wc -c) + 1))
                        echo "  installing $n packages (about a minute, without output)..." >&2
                        ;;
                esac
            done
        [ "${PIPESTATUS[0]}" -eq 0 ] || { say "pip install failed (run it by hand to see why)"; exit 1; }
        touch "$stamp"
        say "done; the commands are also available as $VENV/bin/stemcluster (or: source $VENV/bin/activate)"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        python_env
        cd "$HERE"
        exec "$VENV/bin/stemcluster" segment "$@"
        ;;
    demo | info)
        python_env
        cd "$HERE"
        exec "$VENV/bin/stemcluster" "$cmd" "$@"
        ;;
    stemcluster)
        python_env
        cd "$HERE"
        exec "$VENV/bin/stemcluster" "$@"
        ;;
    napari)
        python_env
        cd "$HERE"
        exec "$VENV/bin/napari" "$@"
        ;;
    test)
        system_packages
        python_env
        cd "$REPO"
        exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [FILE] [options] | demo [-o DIR] | info FILE | stemcluster ARGS |" >&2
        echo "       napari [FILES] | test [pytest options]" >&2
        exit 2
        ;;
esac
