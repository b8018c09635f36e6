#!/usr/bin/env bash
# Installs the Debian packages flatpipe needs to build, test, benchmark and run its generator.
#
# Cheap and idempotent: one dpkg-query call; apt-get runs only when something is missing
# (after a single `apt-get update`). Uses sudo when not root. Safe to run before every build.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(
  build-essential cmake make pkg-config g++
  libasio-dev
  flatbuffers-compiler libflatbuffers-dev
  libsodium-dev
  python3 python3-jinja2
  libgtest-dev libgmock-dev
  libbenchmark-dev
)

die() { echo "install-deps: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 ||
  die "dpkg-query not found: this script needs a Debian-based system (install the packages listed in it by hand otherwise)"

# One dpkg-query for all packages; unknown packages only produce a message on stderr.
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true)

missing=()
for pkg in "${packages[@]}"; do
  # "install ok installed" or "hold ok installed"; anything else (absent, config-files,
  # half-configured, ...) counts as missing.
  if ! grep -Eq "^${pkg//+/\\+} [a-z]+ ok installed$" <<<"$installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} required Debian packages are installed"
  exit 0
fi

echo "install-deps: installing missing packages: ${missing[*]}"

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  # sudo resets the environment, so pass DEBIAN_FRONTEND explicitly.
  as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
  die "not running as root and sudo is not available; as root, run: apt-get update && apt-get install -y ${missing[*]}"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"

"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
