#!/usr/bin/env bash
# Builds nala (and, with `test`, runs every test suite through CTest) on a Debian machine,
# installing the Debian packages it needs first when they are missing.
#   tools/build.sh          configure + build into build/
#   tools/build.sh test     ... then run all tests
# Environment: BUILD_DIR (default build), JOBS (default 2), CMAKE_ARGS (extra configure flags).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-2}

packages=(cmake g++ make doctest-dev libcli11-dev libstb-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
if [ "${1:-}" = "test" ]; then
  ctest --test-dir "$BUILD_DIR" --output-on-failure
fi
