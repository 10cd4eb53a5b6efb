#!/usr/bin/env bash
# Starts a real single-node Slurm cluster on this machine (munged, slurmctld, slurmd) for the Slurm
# tests (tests/test_slurm_cluster.py). Idempotent: installs slurm and munge with apt-get only when
# missing, keeps an existing munge key, rewrites slurm.conf only when it changed and starts only the
# daemons that are not running. Works without systemd or cgroups (containers): the daemons are
# started directly and the configuration avoids every cgroup plugin.
#
# Prints one line "slurm_local: ready ..." and exits 0 once `sinfo` shows the node idle; otherwise
# prints one line "slurm_local: <reason>" on stderr and exits non-zero (not root, no apt-get, a
# daemon that does not start: the line names its log).
#
# No slurmdbd: there is no accounting database, so `sacct` has nothing to read (see tests/slurm.py for
# what that means for submitit). Environment: SLURM_LOCAL_TIMEOUT (seconds to wait for the node,
# default 60).
set -uo pipefail

fail() { echo "slurm_local: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "not root: installing and running munged/slurmctld/slurmd needs root"
HOST=$(hostname -s) || fail "hostname -s failed"
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
start_s=$(date +%s)

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }

# --- 1. packages -------------------------------------------------------------------------------
missing=()
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || fail "no apt-get to install ${missing[*]} (Debian/Ubuntu only)"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm_local_apt.log 2>&1; }
    # A fresh image has empty package lists: update only when the first try cannot find the packages.
    if ! apt_install; then
        apt-get update -q >>/tmp/slurm_local_apt.log 2>&1 || fail "apt-get update failed (see /tmp/slurm_local_apt.log)"
        apt_install || fail "apt-get install ${missing[*]} failed (see /tmp/slurm_local_apt.log)"
    fi
fi

# --- 2. munge ----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null 2>&1
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    [ -s /etc/munge/munge.key ] || fail "could not create /etc/munge/munge.key"
fi
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER": /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    if [ "$MUNGE_USER" = munge ]; then
        runuser -u munge -- munged --force >/tmp/slurm_local_munged.log 2>&1
    else
        munged --force >/tmp/slurm_local_munged.log 2>&1
    fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 \
        || fail "munged does not answer: $(tail -n1 /tmp/slurm_local_munged.log /var/log/munge/munged.log 2>/dev/null | tr '\n' ' ')"
fi

# --- 3. slurm.conf -----------------------------------------------------------------------------
CPUS=$(nproc)
# A little under MemTotal: slurmd drains a node whose configured RealMemory exceeds what it finds.
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm
new_conf=$(cat <<EOF
# Written by scripts/slurm_local.sh: a single-node cluster for the tests, no accounting database.
ClusterName=localci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF"
    conf_changed=1
fi

# --- 4. daemons --------------------------------------------------------------------------------
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ $conf_changed = 1 ]; then
    # A changed node line needs both daemons restarted; stop the ones this script started before.
    for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        if running "$pidfile"; then
            pid=$(cat "$pidfile"); kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi
if ! running /run/slurm/slurmctld.pid; then
    slurmctld >>"$LOG_DIR/slurmctld.stdout" 2>&1 \
        || fail "slurmctld did not start: $(tail -n1 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stdout" 2>/dev/null | tr '\n' ' ')"
fi
if ! running /run/slurm/slurmd.pid; then
    slurmd >>"$LOG_DIR/slurmd.stdout" 2>&1 \
        || fail "slurmd did not start: $(tail -n1 "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.stdout" 2>/dev/null | tr '\n' ' ')"
fi

# --- 5. wait for the node ----------------------------------------------------------------------
deadline=$((start_s + TIMEOUT))
resumed=0
while :; do
    state=$(node_state)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*)
            # A node left down or drained by an earlier run (or by a restart): put it back once.
            if [ $resumed = 0 ]; then scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1; resumed=1; fi ;;
    esac
    if [ "$(date +%s)" -ge $deadline ]; then
        reason=$(sinfo -h -n "$HOST" -o '%E' 2>/dev/null | head -n1)
        fail "node $HOST is '${state:-unknown}' after ${TIMEOUT}s${reason:+ ($reason)}; logs in $LOG_DIR"
    fi
    sleep 0.5
done
echo "slurm_local: ready in $(( $(date +%s) - start_s ))s: node $HOST ($CPUS CPUs, ${MEM_MB} MB) $state in partition debug"
