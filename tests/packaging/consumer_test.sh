#!/usr/bin/env bash
# Packaging test: builds and runs the downstream project examples/consumer
# against headrecon in every supported way, and checks the package files.
#   install      cmake --install into a temp prefix, consumer uses find_package
#   pkg-config   the consumer's main.cpp compiled with `pkg-config headrecon`
#   vcpkg-port   tests/packaging/vcpkg_port_test.sh on that install tree
#   subdirectory consumer with add_subdirectory(<source tree>)
#   fetchcontent consumer with FetchContent (SOURCE_DIR = the source tree)
#   conan        `conan create` of conanfile.py + test_package, offline, with
#                .ci/conan/profile (dependencies are [platform_requires])
#   umbrella     every public header is included by headrecon/headrecon.hpp
# Usage: consumer_test.sh [WORK_DIR]   (default build/packaging; recreated,
# except WORK_DIR/conan-venv, the cached Conan install)
# Environment: HEADRECON_SKIP_CONAN=1 skips the Conan path (needs PyPI once);
# HEADRECON_PACKAGING_TEST_DEFERRED=1 makes a run under ctest (--ctest) exit
# 77 = skipped, because scripts/test.sh runs this test itself, once.
set -u
if [ "${1:-}" = "--ctest" ]; then
  shift
  if [ "${HEADRECON_PACKAGING_TEST_DEFERRED:-0}" = 1 ]; then
    echo "packaging test deferred: scripts/test.sh runs it once after the workflows"
    exit 77
  fi
fi
src=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$src/build/packaging}
mkdir -p "$work"
work=$(cd "$work" && pwd)
# WORK is emptied: only a directory this script created (marked) or an empty one.
if [ -n "$(ls -A "$work")" ] && [ ! -f "$work/.headrecon-packaging-work" ]; then
  echo "refusing to empty $work: not a packaging work directory" >&2
  exit 2
fi
find "$work" -mindepth 1 -maxdepth 1 ! -name conan-venv -exec rm -rf {} +
touch "$work/.headrecon-packaging-work"
conan_version=2.34.0  # pinned; `pip index versions conan` lists the others
start=$SECONDS
pass=0 fail=0 skip=0
ok() { pass=$((pass + 1)); echo "ok      $1 ($2 s)"; }
bad() { fail=$((fail + 1)); echo "FAILED  $1 ($2 s): see $3"; tail -n 25 "$3"; }
# check NAME CMD...: runs CMD with its output in WORK/NAME.log; passes on exit 0.
check() {
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$work/$name.log" 2>&1; then ok "$name" $((SECONDS - t0)); else bad "$name" $((SECONDS - t0)) "$work/$name.log"; fi
}
# Lean builds: Release at -O1, two jobs at most.
cmake_release=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")
run_consumer() {  # run_consumer BUILD_DIR: runs it, prints its line, checks its success line
  local out
  out=$("$1/consumer" "$1/plan.safetensors") || return 1
  echo "$out"
  grep -q "^consumer: headrecon " <<<"$out"
}

prefix=$work/prefix
install_and_consume() {
  cmake -S "$src" -B "$work/headrecon-build" "${cmake_release[@]}" -DHEADRECON_BUILD_TESTS=OFF \
    -DHEADRECON_BUILD_BENCHMARKS=OFF -DHEADRECON_BUILD_EXAMPLES=OFF -DHEADRECON_BUILD_DOCS=OFF &&
    cmake --install "$work/headrecon-build" --prefix "$prefix" &&
    cmake -S "$src/examples/consumer" -B "$work/consumer-install" "${cmake_release[@]}" \
      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON &&
    grep -q "^headrecon_DIR:PATH=$prefix/share/cmake/headrecon\$" "$work/consumer-install/CMakeCache.txt" &&
    cmake --build "$work/consumer-install" -j2 &&
    run_consumer "$work/consumer-install"
}
check install install_and_consume

pkgconfig_consume() {
  local flags
  flags=$(PKG_CONFIG_PATH="$prefix/share/pkgconfig" pkg-config --cflags --libs headrecon) || return 1
  echo "pkg-config --cflags --libs headrecon: $flags"
  mkdir -p "$work/consumer-pkgconfig"
  # shellcheck disable=SC2086  # the flags are meant to split
  c++ -std=c++17 -O1 "$src/examples/consumer/main.cpp" -o "$work/consumer-pkgconfig/consumer" $flags &&
    run_consumer "$work/consumer-pkgconfig"
}
check pkg-config pkgconfig_consume

check vcpkg-port bash "$src/tests/packaging/vcpkg_port_test.sh" "$prefix"

subdirectory_consume() {  # subdirectory_consume NAME EXTRA_CMAKE_ARGS...
  local b=$work/consumer-$1; shift
  cmake -S "$src/examples/consumer" -B "$b" "${cmake_release[@]}" -DHEADRECON_SOURCE_DIR="$src" "$@" &&
    # headrecon is not top-level here: none of its tests, tools, docs or install rules.
    grep -q "^HEADRECON_BUILD_TESTS:BOOL=OFF" "$b/CMakeCache.txt" &&
    grep -q "^HEADRECON_BUILD_EXAMPLES:BOOL=OFF" "$b/CMakeCache.txt" &&
    grep -q "^HEADRECON_BUILD_BENCHMARKS:BOOL=OFF" "$b/CMakeCache.txt" &&
    grep -q "^HEADRECON_INSTALL:BOOL=OFF" "$b/CMakeCache.txt" &&
    cmake --build "$b" -j2 &&
    run_consumer "$b"
}
check subdirectory subdirectory_consume subdirectory
check fetchcontent subdirectory_consume fetchcontent -DHEADRECON_FETCHCONTENT=ON

conan_create() {
  local venv=$work/conan-venv
  if [ ! -x "$venv/bin/conan" ] || ! "$venv/bin/conan" --version | grep -q " $conan_version\$"; then
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q "conan==$conan_version" || return 1
  fi
  # Everything Conan writes stays in WORK: its home (cache, remotes) and a
  # copy of the recipe's files (test_package/build would land in the tree).
  export CONAN_HOME=$work/conan-home
  local conan=$venv/bin/conan
  $conan remote disable conancenter || return 1  # offline: never ask a remote
  mkdir -p "$work/conan-src"
  cp -r "$src/conanfile.py" "$src/CMakeLists.txt" "$src/include" "$src/cmake" "$src/test_package" "$work/conan-src/"
  local version pkg
  version=$(sed -n 's/^#define HEADRECON_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
              "$src/include/headrecon/version.hpp" | paste -sd.)
  $conan create "$work/conan-src" --profile:all "$src/.ci/conan/profile" || return 1
  # package_id() clears every setting: the id is the SHA-1 of nothing.
  pkg=$($conan cache path "headrecon/$version:da39a3ee5e6b4b0d3255bfef95601890afd80709") || return 1
  echo "package folder: $pkg"
  ls "$pkg/share/cmake/headrecon/headreconConfig.cmake" "$pkg/include/headrecon/headrecon.hpp" || return 1
  # test_package found the package's own config, not a CMakeDeps-generated one.
  ! ls "$work"/conan-src/test_package/build/*/generators/ | grep -i '^headrecon.*config.*\.cmake$'
}
if [ "${HEADRECON_SKIP_CONAN:-0}" = 1 ]; then
  skip=$((skip + 1)); echo "skipped conan (HEADRECON_SKIP_CONAN=1)"
else
  check conan conan_create
fi

# Public headers (all but detail/, cpu/ and cuda/), relative to include/headrecon;
# in a git checkout only the tracked ones (others' work in progress is not yet
# part of the library).
public_headers() {
  cd "$src/include/headrecon" || return 1
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -- '*.hpp'
  else
    find . -name '*.hpp' | sed 's|^\./||'
  fi | grep -v -e '^headrecon\.hpp$' -e '^detail/' -e '^cpu/' -e '^cuda/' -e '^mpi/' | sort
}
# Public headers that the umbrella misses, and its includes in sorted order.
umbrella_complete() {
  local missing=0 h
  while IFS= read -r h; do
    grep -q "^#include \"headrecon/$h\"\$" "$src/include/headrecon/headrecon.hpp" ||
      { echo "headrecon.hpp does not include headrecon/$h"; missing=1; }
  done < <(public_headers)
  grep '^#include' "$src/include/headrecon/headrecon.hpp" | LC_ALL=C sort -c || missing=1
  return $missing
}
check umbrella umbrella_complete

for log in install pkg-config subdirectory fetchcontent; do
  [ -f "$work/$log.log" ] && grep "^consumer: " "$work/$log.log" | sed "s/^/$log: /"
done
[ -f "$work/conan.log" ] && grep "test_package: " "$work/conan.log" | tail -1 | sed "s/^/conan: /"
echo "packaging test: $((SECONDS - start)) s in $work"
echo "$pass passed, $fail failed$([ $skip -gt 0 ] && echo ", $skip skipped")"
[ $fail -eq 0 ]
