#!/usr/bin/env bash
# Installs the Debian packages flatpipe needs to build, test, benchmark and run its generator.
#
#   scripts/install-deps.sh           the required packages (make deps / test / demo)
#   scripts/install-deps.sh --bench   the same, then the optional benchmark group: Debian's gRPC
#                                     C++ (the gRPC baseline of `make bench`; flatc's --grpc code
#                                     includes protobuf headers, hence libprotobuf-dev) and
#                                     gnuplot (the chart). Failing to install the optional group
#                                     only warns: `make bench` then runs without them.
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
  liburing-dev  # only for the opt-in FLATPIPE_IO_URING build (docs/runtime.md); small
)

# Optional groups, chosen by flag.
bench_packages=(
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  gnuplot-nox
)

optional=()
for arg in "$@"; do
  case "$arg" in
    --bench) optional+=("${bench_packages[@]}") ;;
    -h|--help)
      sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) echo "install-deps: unknown argument '$arg' (known: --bench)" >&2; exit 2 ;;
  esac
done

die() { echo "install-deps: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 ||
  die "dpkg-query not found: this script needs a Debian-based system (install the packages listed in it by hand otherwise)"

# One dpkg-query for all packages; unknown packages only produce a message on stderr.
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" "${optional[@]}" 2>/dev/null || true)

# Prints the packages among "$@" that are not installed.
not_installed() {
  local pkg
  for pkg in "$@"; do
    # "install ok installed" or "hold ok installed"; anything else (absent, config-files,
    # half-configured, ...) counts as missing.
    if ! grep -Eq "^${pkg//+/\\+} [a-z]+ ok installed$" <<<"$installed"; then
      echo "$pkg"
    fi
  done
}

mapfile -t missing < <(not_installed "${packages[@]}")
missing_optional=()
if ((${#optional[@]} > 0)); then
  mapfile -t missing_optional < <(not_installed "${optional[@]}")
fi

if ((${#missing[@]} == 0 && ${#missing_optional[@]} == 0)); then
  if ((${#optional[@]} > 0)); then
    echo "install-deps: all ${#packages[@]} required and ${#optional[@]} optional Debian packages are installed"
  else
    echo "install-deps: all ${#packages[@]} required Debian packages are installed"
  fi
  exit 0
fi

all_missing=("${missing[@]}" "${missing_optional[@]}")
echo "install-deps: installing missing packages: ${all_missing[*]}"

# When only optional packages are missing, not being able to install them is not an error.
if ((${#missing[@]} == 0)); then
  die() { echo "install-deps: warning: $*; going on without the optional packages" >&2; exit 0; }
fi

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  # sudo resets the environment, so pass DEBIAN_FRONTEND explicitly.
  as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
  die "not running as root and sudo is not available; as root, run: apt-get update && apt-get install -y ${all_missing[*]}"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${all_missing[*]}"

"${as_root[@]}" apt-get update -q || die "apt-get update failed"
if ((${#missing[@]} > 0)); then
  "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ((${#missing_optional[@]} > 0)); then
  if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing_optional[@]}"; then
    echo "install-deps: warning: could not install the optional packages ${missing_optional[*]}; going on without them" >&2
  fi
fi
echo "install-deps: done"
