#!/usr/bin/env bash
# Installs choreographer and what it needs from the system, on Debian or Ubuntu:
#   bash scripts/setup.sh          # system libraries + `pip install -e .`
#   bash scripts/setup.sh --test   # the same with the test dependencies (`pip install -e ".[test]"`)
# Each system package is checked on its own and only the missing ones are installed (as root, or
# through sudo). They are:
#   libegl1, libegl-mesa0, libgl1-mesa-dri   headless rendering of pixel observations (MUJOCO_GL=egl,
#                                            software Mesa when there is no GPU)
#   libosmesa6                               the other headless backend (MUJOCO_GL=osmesa)
#   g++                                      torch.compile's CPU backend (compile=true) builds with it
# Python comes from whatever `python` is first on PATH (a venv or conda env, if one is active).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 g++)
missing=()
if command -v dpkg-query >/dev/null; then
  for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
else
  echo "setup: no dpkg here (not Debian/Ubuntu); install EGL with Mesa, OSMesa and g++ with your package manager" >&2
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python -m pip install -q -e ".${extras}"
echo "setup: done (python: $(command -v python))"
