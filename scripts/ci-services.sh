#!/usr/bin/env bash
# Install, start and stop the real services the test suite runs against:
#   - SLURM (slurmctld + slurmd on this one node, slurmdbd + MariaDB so `sacct` works)
#   - the Docker engine, plus a locally built base image (no image registry is reachable)
#
# Usage: scripts/ci-services.sh start|stop|status
#
# Written for a Debian bookworm machine without systemd, run as root, possibly from a
# non-interactive CI shell with no TTY. `start` is idempotent: it installs only missing
# packages, starts only daemons that are not already running and builds the base image only
# when it is absent. It records the daemons it started in $STATE/started, and `stop` stops
# exactly those (by pid), so it never touches services someone else started.
#
# Environment (all optional):
#   CONNECTO_CI_STATE       state folder (default /tmp/connecto-ci): config, pid files, logs
#   CONNECTO_CI_TIMEOUT     seconds to wait for each daemon to become ready (default 90)
#   CONNECTO_CI_ACCOUNTING  1 (default) = slurmdbd + MariaDB; 0 = accounting_storage/none
#   CONNECTO_CI_MIRROR      Debian mirror for debootstrap (default: read from apt sources)
#   CONNECTO_CI_IMAGE       base image name (default connecto-base:bookworm)
#   CONNECTO_CI_REALMEM     RealMemory (MB) for the SLURM node (default: from free -m)
#   CONNECTO_CI_CPUS        CPUs for the SLURM node (default: nproc)
set -Eeuo pipefail

STATE=${CONNECTO_CI_STATE:-/tmp/connecto-ci}
TIMEOUT=${CONNECTO_CI_TIMEOUT:-90}
ACCOUNTING=${CONNECTO_CI_ACCOUNTING:-1}
IMAGE=${CONNECTO_CI_IMAGE:-connecto-base:bookworm}
SUITE=bookworm
LOGDIR=$STATE/log
STARTED=$STATE/started
# The default path, so later processes (tests) find it without an env var. Exported so this
# script's own slurm calls use it even if the caller's environment points elsewhere.
export SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
ROOTFS_TAR=$STATE/cache/rootfs-$SUITE.tar  # cached debootstrap output: re-import is ~seconds
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=connecto-ci                        # MariaDB runs with --skip-networking: socket only
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge docker.io debootstrap debian-archive-keyring chromium)

# Daemons live in /usr/sbin, which a CI user's PATH may lack. Append (not prepend) so a newer
# docker client in /usr/local/bin keeps precedence; either client talks to the daemon.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'ci-services: [%3ss] %s\n' "$SECONDS" "$*"; }
warn() { printf 'ci-services: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ci-services: ERROR: %s\n' "$*" >&2
    printf 'ci-services: logs are in %s\n' "$LOGDIR" >&2
    exit 1
}
# Any unexpected failing command still ends with a pointer to the logs (said once, by the
# main shell, not by command substitutions that inherit the trap).
on_error() {
    local rc=$1 line=$2
    if [[ $BASHPID == "$$" ]]; then
        printf 'ci-services: ERROR: command failed (exit %s) at line %s; logs in %s\n' \
            "$rc" "$line" "$LOGDIR" >&2
    fi
    exit "$rc"
}
trap 'on_error $? $LINENO' ERR

# Poll a command (quietly) until it succeeds or TIMEOUT seconds pass.
wait_for() { # TIMEOUT CMD...
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# Daemons must not inherit any of our file descriptors beyond stdio (which go to their log):
# a CI runner waits for EOF on its pipes, so a daemon holding one would hang the job, and one
# holding our lock fd (9) would block every later start/stop.
# Closes them and execs CMD, so call it only in a subshell or a background job.
exec_detached() { # CMD...
    local fdpath fd
    for fdpath in /proc/"$BASHPID"/fd/*; do
        fd=${fdpath##*/}
        if ((fd > 2)); then
            exec {fd}>&-
        fi
    done
    exec "$@"
}

# Start a foreground daemon in its own session, detached as above. It is recorded as started
# at once, so `stop` cleans it up even if it never becomes ready.
spawn() { # NAME PIDFILE LOGFILE CMD...
    local name=$1 pidfile=$2 logfile=$3
    shift 3
    # (A background job is one forked process, so $! ends up being the daemon itself.)
    exec_detached setsid "$@" </dev/null >>"$logfile" 2>&1 &
    printf '%s %s %s\n' "$name" "$!" "$pidfile" >>"$STARTED"
    log "started $name (pid $!)"
}

# Run a self-daemonizing program (it forks and its launcher exits), detached as above.
run_daemon() { # LOGFILE CMD...
    local logfile=$1
    shift
    (exec_detached "$@") </dev/null >>"$logfile" 2>&1
}

# Is PID a live process? Zombies do not count: pid 1 on these machines reaps exited daemons
# only every couple of seconds, and a stop followed at once by a start must not see them.
pid_alive() { # PID
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # fields after "(comm)"; the first is the state
    [[ ${stat%% *} != [ZX] ]]
}

# Is PID a live process called NAME (so a recycled pid is never mistaken for a daemon)?
alive_as() { # NAME PID
    [[ $(cat "/proc/$2/comm" 2>/dev/null) == "$1" ]] && pid_alive "$2"
}

pid_from_file() { # PIDFILE -> prints the pid if the file names a live process
    local pid=
    [[ -s $1 ]] || return 1
    read -r pid <"$1" || true
    [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" && printf '%s\n' "$pid"
}

# Remember that THIS script started a (self-daemonizing) daemon, so `stop` stops it and
# nothing else.
record_started() { # NAME PIDFILE
    local pid
    if ! wait_for "$TIMEOUT" pid_from_file "$2"; then
        warn "$1 did not write a live pid to $2"
        return 1
    fi
    pid=$(pid_from_file "$2")
    printf '%s %s %s\n' "$1" "$pid" "$2" >>"$STARTED"
    log "started $1 (pid $pid)"
}

is_running() { # NAME
    local pid
    for pid in $(pgrep -x "$1" || true); do
        alive_as "$1" "$pid" && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Packages

install_packages() {
    local missing=() pkg added_policy=0
    for pkg in "${PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed"
        return 0
    fi
    log "installing ${missing[*]} (log: $LOGDIR/apt.log)"
    # Without systemd, maintainer scripts would otherwise try to start the daemons through
    # their init scripts; we start them ourselves, so forbid that for the duration.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    # DPkg::Lock::Timeout: another process on this machine may be installing too.
    {
        apt-get update -q &&
            apt-get install -y -q --no-install-recommends \
                -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef \
                -o Dpkg::Options::=--force-confold "${missing[@]}"
    } >>"$LOGDIR/apt.log" 2>&1 || rc=$?
    if ((added_policy)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if ((rc != 0)); then
        tail -n 20 "$LOGDIR/apt.log" >&2 || true
        die "apt-get failed (exit $rc) installing: ${missing[*]}"
    fi
    log "packages installed"
}

# ---------------------------------------------------------------------------------------------
# munge: authentication for every SLURM daemon and client

start_munge() {
    if is_running munged; then
        log "munged already running"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        # The package normally creates the key; make one if it did not.
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge # clients need to reach the socket
    rm -f /run/munge/munged.pid
    run_daemon "$LOGDIR/munged.log" runuser -u munge -- /usr/sbin/munged ||
        die "munged failed to start (see $LOGDIR/munged.log and /var/log/munge/munged.log)"
    record_started munged /run/munge/munged.pid || die "munged did not stay up"
}

# ---------------------------------------------------------------------------------------------
# Accounting: MariaDB + slurmdbd. Any failure here returns non-zero; the caller falls back to
# accounting_storage/none instead of failing the whole start.

mariadb_up() { mariadb-admin --protocol=socket -u root ping; }

start_mariadb() {
    if mariadb_up >/dev/null 2>&1; then
        log "mariadb already running"
        return 0
    fi
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --skip-test-db >>"$LOGDIR/mariadb.log" 2>&1 || return 1
    fi
    touch "$LOGDIR/mariadb.log"
    chown mysql:mysql "$LOGDIR/mariadb.log"
    rm -f /run/mysqld/mysqld.pid
    # No TCP: slurmdbd reaches it over the local socket, nothing else needs it.
    spawn mariadbd /run/mysqld/mysqld.pid "$LOGDIR/mariadb.log" \
        /usr/sbin/mariadbd --user=mysql --skip-networking \
        --pid-file=/run/mysqld/mysqld.pid --log-error="$LOGDIR/mariadb.log"
    wait_for "$TIMEOUT" mariadb_up || return 1
}

setup_database() {
    mariadb --protocol=socket -u root <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_slurmdbd_conf() {
    local tmp=$STATE/slurmdbd.conf
    cat >"$tmp" <<EOF
# Written by scripts/ci-services.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
LogFile=$LOGDIR/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
    # slurmdbd refuses a config readable by others (it holds the DB password).
    if ! cmp -s "$tmp" "$SLURMDBD_CONF"; then
        install -m 600 "$tmp" "$SLURMDBD_CONF"
    fi
    rm -f "$tmp"
}

slurmdbd_up() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if is_running slurmdbd; then
        log "slurmdbd already running"
        return 0
    fi
    rm -f "$STATE/slurmdbd.pid"
    run_daemon "$LOGDIR/slurmdbd.log" /usr/sbin/slurmdbd || return 1
    record_started slurmdbd "$STATE/slurmdbd.pid" || return 1
}

register_cluster() {
    # The first start creates the tables, which takes a few seconds.
    wait_for "$TIMEOUT" slurmdbd_up || return 1
    local clusters
    clusters=$(slurmdbd_up 2>/dev/null) || return 1
    if grep -qx ci <<<"$clusters"; then
        return 0
    fi
    sacctmgr -i add cluster ci >>"$LOGDIR/slurmdbd.log" 2>&1 || return 1
    log "registered cluster 'ci' with slurmdbd"
}

setup_accounting() {
    start_mariadb || return 1
    setup_database || return 1
    write_slurmdbd_conf
    start_slurmdbd || return 1
    # sacctmgr finds slurmdbd through slurm.conf, so write it (with accounting) first.
    write_slurm_conf accounting_storage/slurmdbd
    register_cluster || return 1
}

# ---------------------------------------------------------------------------------------------
# SLURM: one node called "localhost", partitions debug (default) and gpu_any

node_memory_mb() {
    local total
    if [[ -n ${CONNECTO_CI_REALMEM:-} ]]; then
        printf '%s\n' "$CONNECTO_CI_REALMEM"
        return
    fi
    total=$(free -m | awk '/^Mem:/ {print $2}')
    # Leave a margin: slurmd drains a node whose configured memory exceeds what it sees.
    printf '%s\n' $((total - total / 10 - 256))
}

SLURM_CONF_CHANGED=0
write_slurm_conf() { # ACCOUNTING_STORAGE_TYPE
    local tmp=$STATE/slurm.conf.new
    cat >"$tmp" <<EOF
# Written by scripts/ci-services.sh (copy of $STATE/slurm.conf)
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurm/state
SlurmdSpoolDir=$STATE/slurm/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Schedule at once on submit (jobs start within about a second).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=$1
AccountingStorageHost=localhost
KillWait=5
MinJobAge=300
NodeName=localhost CPUs=${CONNECTO_CI_CPUS:-$(nproc)} RealMemory=$(node_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu_any Nodes=localhost MaxTime=INFINITE State=UP
EOF
    mv "$tmp" "$STATE/slurm.conf"
    mkdir -p /etc/slurm
    if ! cmp -s "$STATE/slurm.conf" "$SLURM_CONF"; then
        # Keep whatever was there before we first took over the file.
        if [[ -e $SLURM_CONF && ! -e $SLURM_CONF.before-connecto ]] &&
            ! grep -q 'Written by scripts/ci-services.sh' "$SLURM_CONF"; then
            cp -p "$SLURM_CONF" "$SLURM_CONF.before-connecto"
        fi
        install -m 644 "$STATE/slurm.conf" "$SLURM_CONF"
        SLURM_CONF_CHANGED=1
    fi
}

node_ready() {
    local states
    states=$(sinfo -h -o %T 2>/dev/null) || return 1
    [[ -n $states ]] || return 1
    # idle, or busy with jobs from an earlier user; "*" suffix = not responding.
    ! grep -qvxE 'idle|mixed|allocated|completing' <<<"$states"
}

start_slurm() {
    local acct=accounting_storage/none
    mkdir -p "$STATE/slurm/state" "$STATE/slurm/spool"
    if [[ $ACCOUNTING == 1 ]]; then
        if setup_accounting; then
            acct=accounting_storage/slurmdbd
        else
            warn "accounting (MariaDB + slurmdbd) failed to start; falling back to" \
                "accounting_storage/none: sacct will not work (see $LOGDIR/slurmdbd.log," \
                "$LOGDIR/mariadb.log)"
        fi
    else
        log "accounting disabled (CONNECTO_CI_ACCOUNTING=0)"
    fi
    write_slurm_conf "$acct"
    log "slurm.conf: $SLURM_CONF ($acct)"

    if ((SLURM_CONF_CHANGED)) && is_running slurmctld; then
        # Some settings (e.g. the accounting type) only apply on a restart, not on
        # `scontrol reconfigure`. Restart the daemons if they are ours; jobs survive that.
        if stop_recorded slurmd && stop_recorded slurmctld; then
            log "slurm.conf changed: restarting slurmctld and slurmd"
        else
            warn "slurm.conf changed while a slurmctld not started by this script was running;" \
                "ran 'scontrol reconfigure' (a changed accounting type needs a restart)"
            scontrol reconfigure || warn "scontrol reconfigure failed"
        fi
    fi
    if is_running slurmctld; then
        log "slurmctld already running"
    else
        rm -f "$STATE/slurmctld.pid"
        run_daemon "$LOGDIR/slurmctld.log" /usr/sbin/slurmctld ||
            die "slurmctld failed to start (see $LOGDIR/slurmctld.log)"
        record_started slurmctld "$STATE/slurmctld.pid" ||
            die "slurmctld did not stay up (see $LOGDIR/slurmctld.log)"
    fi
    wait_for "$TIMEOUT" scontrol ping ||
        die "slurmctld not answering after ${TIMEOUT}s (see $LOGDIR/slurmctld.log)"

    if is_running slurmd; then
        log "slurmd already running"
    else
        rm -f "$STATE/slurmd.pid"
        # -N: this machine's host name is not "localhost", the node's name in slurm.conf.
        run_daemon "$LOGDIR/slurmd.log" /usr/sbin/slurmd -N localhost ||
            die "slurmd failed to start (see $LOGDIR/slurmd.log)"
        record_started slurmd "$STATE/slurmd.pid" ||
            die "slurmd did not stay up (see $LOGDIR/slurmd.log)"
    fi

    if ! wait_for "$TIMEOUT" node_ready; then
        # A node left down/drained by an earlier run: ask once to resume it, then wait again.
        scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        wait_for 30 node_ready ||
            die "slurm node not idle after ${TIMEOUT}s: sinfo says '$(sinfo -h -o '%P=%T' | paste -sd' ')'" \
                "(see $LOGDIR/slurmctld.log, $LOGDIR/slurmd.log)"
    fi
    log "slurm node ready: $(sinfo -h -o '%P=%T' | paste -sd' ')"
}

# ---------------------------------------------------------------------------------------------
# Docker engine and the base image

start_docker() {
    if docker info >/dev/null 2>&1; then
        log "dockerd already running"
        return 0
    fi
    rm -f "$STATE/dockerd.pid"
    spawn dockerd "$STATE/dockerd.pid" "$LOGDIR/dockerd.log" \
        /usr/sbin/dockerd --pidfile "$STATE/dockerd.pid"
    wait_for "$TIMEOUT" docker info ||
        die "dockerd not answering after ${TIMEOUT}s (see $LOGDIR/dockerd.log)"
    log "dockerd ready"
}

# The Debian mirror apt is configured with (one-line .list and deb822 .sources formats).
detect_mirror() {
    local f uri
    if [[ -n ${CONNECTO_CI_MIRROR:-} ]]; then
        printf '%s\n' "$CONNECTO_CI_MIRROR"
        return 0
    fi
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [options] URI SUITE COMPONENT...
        uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # Stanzas separated by blank lines; fields Types/URIs/Suites/Enabled.
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"; key = ""
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^#/) continue
                    if (line ~ /^[ \t]/) { val = line }
                    else {
                        p = index(line, ":"); if (!p) continue
                        key = tolower(substr(line, 1, p - 1)); val = substr(line, p + 1)
                    }
                    if (key == "types") types = types " " val
                    else if (key == "uris") uris = uris " " val
                    else if (key == "suites") suites = suites " " val
                    else if (key == "enabled") enabled = val
                }
                if (tolower(enabled) ~ /no/) next
                if ((types " ") !~ /[ \t]deb[ \t]/) next
                if ((suites " ") !~ ("[ \t]" suite "[ \t]")) next
                n = split(uris, u, /[ \t]+/)
                for (j = 1; j <= n; j++) if (u[j] != "") { print u[j]; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    return 1
}

build_rootfs_tar() {
    local mirror rootfs=$STATE/rootfs
    mirror=$(detect_mirror) || die "no '$SUITE' Debian mirror found in the apt sources; set CONNECTO_CI_MIRROR"
    log "debootstrap $SUITE from $mirror (about a minute; log: $LOGDIR/debootstrap.log)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$mirror" \
        </dev/null >"$LOGDIR/debootstrap.log" 2>&1 ||
        die "debootstrap failed (see $LOGDIR/debootstrap.log)"
    # Drop downloaded .debs and package lists: they only make the image bigger.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$(dirname "$ROOTFS_TAR")"
    tar -C "$rootfs" -cf "$ROOTFS_TAR.partial" .
    mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR" # only a complete tarball counts as cached
    rm -rf "$rootfs"
}

build_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE already present"
        return 0
    fi
    if [[ -s $ROOTFS_TAR ]]; then
        log "using cached rootfs $ROOTFS_TAR"
    else
        build_rootfs_tar
    fi
    docker import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$IMAGE" >/dev/null ||
        die "docker import of $ROOTFS_TAR failed"
    log "image $IMAGE built"
}

# ---------------------------------------------------------------------------------------------
# Subcommands

# One start/stop at a time (a second caller waits for the first).
take_lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/lock"
    flock -w 900 9 || die "another ci-services.sh still holds $STATE/lock"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root (installs packages, starts system daemons)"
    take_lock
    mkdir -p "$LOGDIR" "$STATE/cache"
    log "state folder $STATE"
    install_packages
    start_munge
    start_slurm
    start_docker
    build_image
    log "all services up in ${SECONDS}s (stop with: $0 stop)"
}

stop_one() { # NAME PID PIDFILE
    local name=$1 pid=$2 pidfile=$3 live i
    # Prefer the pid file (a daemon may have re-forked), but only a process that still
    # carries the daemon's name: never kill a recycled pid.
    if live=$(pid_from_file "$pidfile" 2>/dev/null); then
        pid=$live
    fi
    if ! alive_as "$name" "$pid"; then
        log "$name (pid $pid) not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # Up to 60 s: dockerd first stops its running containers (10 s grace each).
    for ((i = 0; i < 300; i++)); do
        alive_as "$name" "$pid" || break
        sleep 0.2
    done
    if alive_as "$name" "$pid"; then
        warn "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
}

# Stop one daemon that this script recorded as started, and forget it. Fails if not ours.
stop_recorded() { # NAME
    local name pid pidfile found=1
    [[ -s $STARTED ]] || return 1
    while read -r name pid pidfile; do
        if [[ $name == "$1" ]]; then
            stop_one "$name" "$pid" "$pidfile"
            found=0
        fi
    done <"$STARTED"
    ((found == 0)) || return 1
    awk -v n="$1" '$1 != n' "$STARTED" >"$STARTED.new"
    mv "$STARTED.new" "$STARTED"
}

cmd_stop() {
    local name pid pidfile
    take_lock
    if [[ ! -s $STARTED ]]; then
        log "nothing to stop (no daemons recorded in $STARTED)"
        return 0
    fi
    # Reverse start order: slurmd before slurmctld before slurmdbd before mariadb, etc.
    while read -r name pid pidfile; do
        [[ -n $name ]] || continue
        stop_one "$name" "$pid" "$pidfile"
    done < <(tac "$STARTED")
    rm -f "$STARTED"
    log "stopped in ${SECONDS}s"
}

cmd_status() {
    local name rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd dockerd; do
        if is_running "$name"; then
            log "$name running (pid $(pgrep -x "$name" | paste -sd' '))"
        elif [[ $name == mariadbd || $name == slurmdbd ]]; then
            log "$name not running (needed only for sacct)"
        else
            log "$name NOT running"
            rc=1
        fi
    done
    # Only ask the daemons that run: clients wait ~10 s for a missing slurmctld.
    if ! is_running slurmctld; then
        :
    elif node_ready; then
        log "slurm node ready: $(sinfo -h -o '%P=%T' | paste -sd' ')"
    else
        log "slurm node NOT ready: $(sinfo -h -o '%P=%T' | paste -sd' ')"
        rc=1
    fi
    if ! docker info >/dev/null 2>&1; then
        log "docker daemon NOT answering"
        rc=1
    elif docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE present"
    else
        log "image $IMAGE absent"
        rc=1
    fi
    if [[ -s $STARTED ]]; then
        log "started by this script (stopped by 'stop'): $(awk '{print $1}' "$STARTED" | paste -sd' ')"
    fi
    return "$rc"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status || exit 1 ;; # (|| keeps the ERR trap quiet: not-running is an answer)
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
