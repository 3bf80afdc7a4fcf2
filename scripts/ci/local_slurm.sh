#!/usr/bin/env bash
# A real single-host Slurm cluster for tests: slurmctld, two slurmd daemons emulating nodes
# 127.0.0.1 and 127.0.0.2, and munge, all started by hand (no systemd) with every path under one
# directory. Idempotent.
#
# cred_expire=10: a requeued job starts again after 10 s instead of Slurm's default 120.
#
#   scripts/ci/local_slurm.sh up     install (Debian packages, needs root) and start; prints the
#                                     SLURM_CONF line to export; exit status 3: Slurm cannot be had here
#   scripts/ci/local_slurm.sh down   stop the daemons
#   scripts/ci/local_slurm.sh status exit 0 when the cluster answers and both nodes are idle
#
# KFM_SLURM_DIR (default /tmp/kfm-slurm) holds config, state, logs and sockets. Client commands
# need SLURM_CONF=$KFM_SLURM_DIR/etc/slurm.conf.
set -euo pipefail

DIR=${KFM_SLURM_DIR:-/tmp/kfm-slurm}
CONF=$DIR/etc/slurm.conf
NODES=(127.0.0.1 127.0.0.2)
CTLD_PORT=${KFM_SLURM_PORT:-6917}
export SLURM_CONF=$CONF

log() { echo "local_slurm: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        log "Slurm is not installed and installing it needs root (apt-get install slurmctld slurmd slurm-client munge)"
        exit 3
    fi
    log "installing slurmctld slurmd slurm-client munge"
    local pkgs=(slurmctld slurmd slurm-client munge)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; then
            log "apt-get could not install ${pkgs[*]}"
            exit 3
        fi
    fi
}

write_config() {
    mkdir -p "$DIR"/{etc,state,log,run} "$DIR"/spool/{127.0.0.1,127.0.0.2}
    local cpus
    cpus=$(nproc)
    cat >"$CONF.new" <<EOF
ClusterName=kfm-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.sock,cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=127.0.0.1 NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 1)) CPUs=$cpus State=UNKNOWN
NodeName=127.0.0.2 NodeAddr=127.0.0.2 Port=$((CTLD_PORT + 2)) CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    if [ -f "$CONF" ] && ! cmp -s "$CONF" "$CONF.new"; then
        log "the configuration changed: restarting the daemons"
        down
    fi
    mv "$CONF.new" "$CONF"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    install_packages
    write_config
    if ! running "$DIR/run/munged.pid"; then
        [ -f "$DIR/munge.key" ] || mungekey -c -k "$DIR/munge.key"
        munged -f --socket="$DIR/munge.sock" --key-file="$DIR/munge.key" --pid-file="$DIR/run/munged.pid" \
            --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge.seed"
    fi
    if ! running "$DIR/run/slurmctld.pid"; then
        slurmctld -c -f "$CONF"
    fi
    for node in "${NODES[@]}"; do
        running "$DIR/run/slurmd-$node.pid" || slurmd -N "$node" -f "$CONF"
    done
    for _ in $(seq 1 120); do
        if status; then
            log "up: export SLURM_CONF=$CONF"
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    log "the cluster did not come up; logs in $DIR/log"
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 1
}

status() {
    [ -f "$CONF" ] || return 1
    local idle
    idle=$(sinfo -h -N -o "%N %t" 2>/dev/null | grep -c " idle" || true)
    [ "$idle" = "${#NODES[@]}" ]
}

down() {
    local pids=()
    for pidfile in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/run/munged.pid"; do
        if running "$pidfile"; then
            pids+=("$(cat "$pidfile")")
            kill "${pids[-1]}" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 40); do  # until they have exited (a later `up` must not see them alive)
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.25
    done
    log "down"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) log "usage: $0 up|down|status"; exit 2 ;;
esac
