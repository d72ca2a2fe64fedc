#!/usr/bin/env bash
# Checks the vcpkg port (ports/headrecon) against the tree `cmake --install`
# produces; the vcpkg tool itself is not available here, so this checks what
# the port relies on, not a `vcpkg install`:
#  - vcpkg.json is valid JSON, its version is the one in version.hpp, and it
#    lists the dependencies (not xtensor: no installed header includes it) and
#    the "cuda" feature;
#  - every -DHEADRECON_* option the portfile passes exists in CMakeLists.txt;
#  - the portfile's CONFIG_PATH holds the config, version and targets files,
#    the version file is architecture-independent, headers are under
#    include/headrecon, the pkg-config file is there and nothing is under lib/.
# Usage: vcpkg_port_test.sh [INSTALL_PREFIX]  (default: configure and install
# the project into a temporary prefix first)
set -u
src=$(cd "$(dirname "$0")/../.." && pwd)
port=$src/ports/headrecon
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }

prefix=${1:-}
if [ -z "$prefix" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  prefix=$tmp/prefix
  cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DHEADRECON_BUILD_TESTS=OFF \
    -DHEADRECON_BUILD_BENCHMARKS=OFF -DHEADRECON_BUILD_EXAMPLES=OFF -DHEADRECON_BUILD_DOCS=OFF >"$tmp/log" 2>&1 &&
    cmake --install "$tmp/build" --prefix "$prefix" >>"$tmp/log" 2>&1 ||
    { cat "$tmp/log"; echo "FAILED: configure and install"; exit 1; }
fi

version=$(sed -n 's/^#define HEADRECON_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
            "$src/include/headrecon/version.hpp" | paste -sd.)
if python3 - "$port/vcpkg.json" "$version" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
deps = {x if isinstance(x, str) else x["name"] for x in d["dependencies"]}
need = {"openblas", "lapack", "highway", "nlohmann-json", "vcpkg-cmake", "vcpkg-cmake-config"}
assert d["name"] == "headrecon", d["name"]
assert d["version"] == sys.argv[2], f"vcpkg.json version {d['version']} != version.hpp {sys.argv[2]}"
assert need <= deps, f"missing dependencies: {sorted(need - deps)}"
assert not deps & {"xtensor", "xtensor-blas", "xtl"}, "xtensor is a test dependency, not exported"
cuda = d["features"]["cuda"]["dependencies"]
assert "cuda" in [x if isinstance(x, str) else x["name"] for x in cuda], cuda
EOF
then ok; else bad "vcpkg.json"; fi

for opt in $(grep -o -- '-DHEADRECON_[A-Z_]*' "$port/portfile.cmake" | sed 's/^-D//' | sort -u); do
  grep -q "option($opt " "$src/CMakeLists.txt" && ok || bad "portfile passes -D$opt, which CMakeLists.txt does not define"
done
grep -q 'set(VCPKG_BUILD_TYPE release)' "$port/portfile.cmake" && ok || bad "portfile is not release-only"

config_path=$(sed -n 's/.*vcpkg_cmake_config_fixup(.*CONFIG_PATH \([^ )]*\).*/\1/p' "$port/portfile.cmake")
[ -n "$config_path" ] && ok || bad "no CONFIG_PATH in portfile.cmake"
for f in headreconConfig.cmake headreconConfigVersion.cmake headreconTargets.cmake; do
  [ -f "$prefix/$config_path/$f" ] && ok || bad "$config_path/$f is not in the install tree"
done
# ARCH_INDEPENDENT: the version file returns before its CMAKE_SIZEOF_VOID_P check.
grep -A1 -F 'if("TRUE")' "$prefix/$config_path/headreconConfigVersion.cmake" | grep -q 'return()' && ok ||
  bad "headreconConfigVersion.cmake is architecture-dependent (no ARCH_INDEPENDENT)"
grep -q "PACKAGE_VERSION \"$version\"" "$prefix/$config_path/headreconConfigVersion.cmake" && ok ||
  bad "headreconConfigVersion.cmake does not say $version"
for h in headrecon.hpp version.hpp plan.hpp select/greedy.hpp detail/json.hpp; do
  [ -f "$prefix/include/headrecon/$h" ] && ok || bad "include/headrecon/$h is not installed"
done
# The package exports only what its headers use: no installed header includes xtensor.
! grep -rlE '#include *[<"]xtensor' "$prefix/include/headrecon" && ok || bad "an installed header includes xtensor"
! grep -qE 'xtensor|xtl' "$prefix/$config_path/headreconConfig.cmake" "$prefix/share/pkgconfig/headrecon.pc" && ok ||
  bad "the CMake package or pkg-config file still names xtensor"
[ -f "$prefix/share/pkgconfig/headrecon.pc" ] && ok || bad "share/pkgconfig/headrecon.pc is not installed"
[ ! -e "$prefix/lib" ] && ok || bad "a header-only install has a lib/ directory"
grep -q 'headrecon::headrecon' "$port/usage" && ok || bad "usage does not name headrecon::headrecon"

echo "vcpkg port: $pass passed, $fail failed"
[ $fail -eq 0 ]
