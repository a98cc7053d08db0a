#!/usr/bin/env bash
# Quick smoke check of the services started by scripts/ci-services.sh: a SLURM job in each
# partition (with its exit code propagated by `sbatch --wait`), sacct when accounting is on,
# and a network-less container from the locally built base image. Exits non-zero on failure.
set -euo pipefail

IMAGE=${CONNECTO_CI_IMAGE:-connecto-base:bookworm}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" # job output files land here, not in the caller's folder

failed=0
passed=0
log() { printf 'ci-services-check: %s\n' "$*"; }

# Run one named check; print its duration, and its output on failure. (The checks run in an
# `||` context where `set -e` is off, hence the explicit `|| return 1` in them.)
check() { # NAME CMD...
    local name=$1 start=$SECONDS rc=0
    shift
    "$@" >"$work/out" 2>&1 || rc=$?
    if ((rc == 0)); then
        passed=$((passed + 1))
        log "ok   $name ($((SECONDS - start))s)"
    else
        failed=$((failed + 1))
        log "FAIL $name (exit $rc)"
        sed 's/^/    /' "$work/out" >&2
    fi
}

# sbatch --wait returns the job's own exit code; also check the job really ran.
batch_job() { # PARTITION
    local jid
    jid=$(timeout 120 sbatch --parsable --wait -p "$1" -o "$work/%j.out" --wrap 'echo hi') || return 1
    jid=${jid%%;*}
    echo "job $jid"
    grep -qx hi "$work/$jid.out" || return 1
    echo "$jid" >"$work/last_job"
}

failing_job() {
    local rc=0
    timeout 120 sbatch --parsable --wait -p debug -o /dev/null --wrap 'exit 3' || rc=$?
    echo "sbatch --wait exit code: $rc"
    ((rc == 3))
}

# With slurmdbd, the finished job must show up in sacct (the record lands a moment later).
sacct_job() {
    local jid i state
    jid=$(cat "$work/last_job") || return 1
    for ((i = 0; i < 20; i++)); do
        state=$(sacct -n -X -P -j "$jid" -o State 2>&1 || true)
        echo "sacct: $state"
        [[ $state == COMPLETED ]] && return 0
        sleep 0.5
    done
    return 1
}

docker_run() {
    local out
    out=$(timeout 120 docker run --rm --network none "$IMAGE" python3 -c 'print(1)') || return 1
    echo "output: $out"
    [[ $out == 1 ]]
}

check "sbatch --wait -p debug" batch_job debug
check "sbatch --wait -p gpu_any" batch_job gpu_any
check "sbatch --wait propagates exit code" failing_job
# Capture first: `grep -q` closing the pipe early would fail the pipeline under pipefail.
config=$(scontrol show config 2>/dev/null || true)
if grep -q 'AccountingStorageType *= *accounting_storage/slurmdbd' <<<"$config"; then
    check "sacct sees the job" sacct_job
else
    log "skip sacct (accounting_storage/none)"
fi
check "docker run --network none $IMAGE python3" docker_run

if ((failed)); then
    log "$failed of $((passed + failed)) checks FAILED"
    exit 1
fi
log "all $passed checks OK"
