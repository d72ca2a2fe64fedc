#!/usr/bin/env bash
# The whole test suite: C++17 build (library, tool, tests; warnings as errors)
# and a C++20 build of the tests, each run through ctest (the C++17 run also
# replays the fuzz corpora and reproducers, label "fuzz", and runs the Python
# capture's tests, label python, ~2-3 min; and, built with HEADRECON_WITH_MPI,
# the MPI tests on 1, 2 and 4 ranks, label mpi, ~1 min); the unit, CLI and fuzz-replay
# tests again under ASan + UBSan with LeakSanitizer (preset ci-sanitize); then
# the packaging test (install/find_package, pkg-config, add_subdirectory,
# FetchContent, Conan, vcpkg port) and the API docs (Doxygen, warnings are
# errors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# ctest skips packaging_consumer (it would run once per workflow): it runs below.
export HEADRECON_PACKAGING_TEST_DEFERRED=1
# ctest python_capture (examples/python): torch + transformers from PyPI in a venv
# under the build dir (4.1 GB; 2.4 GB of wheels kept in ~/.cache/headrecon/wheels).
export HEADRECON_PYTHON_TESTS=1
cmake --workflow --preset ci-cxx17
cmake --workflow --preset ci-cxx20
start=$SECONDS
cmake --workflow --preset ci-sanitize
echo "ci-sanitize (ASan + UBSan: unit, cli, fuzz replays): $((SECONDS - start)) s"
bash tests/cuda/ci.sh build/ci-cuda  # CUDA backend where nvcc exists (sm_80/90); GPU tests skip without a GPU
bash tests/packaging/consumer_test.sh build/packaging
cmake --build build/ci-cxx17 --target docs
