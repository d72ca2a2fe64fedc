#!/usr/bin/env bash
# mpirun.sh NP CMD...: runs CMD on NP ranks of Open MPI on this machine
# (--oversubscribe: more ranks than cores; --allow-run-as-root when root, as
# in CI containers), under `timeout` so that a hang fails instead of waiting.
set -euo pipefail
np=$1
shift
flags=(--oversubscribe -np "$np")
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
# Containers often forbid the cross-memory-attach single copy: use plain shared memory.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
exec timeout --signal=KILL "${HEADRECON_MPI_TIMEOUT:-180}" mpirun "${flags[@]}" "$@"
