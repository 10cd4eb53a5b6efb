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
# Accounting: submitit reads job states only through `sacct`, which needs slurmdbd and a database, so
# by default the script also installs mariadb-server and slurmdbd, starts a local MariaDB (socket
# only, no TCP port) and slurmdbd, and slurmctld registers the cluster there by itself. Without them
# `sacct` fails ("Slurm accounting storage is disabled") and submitit sees every job as UNKNOWN (see
# tests/slurm.py). SLURM_LOCAL_ACCOUNTING=0 skips them (accounting_storage/none).
# Environment: SLURM_LOCAL_TIMEOUT (seconds to wait for the node, default 60).
set -uo pipefail

fail() { echo "slurm_local: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "not root: installing and running munged/slurmctld/slurmd needs root"
HOST=$(hostname -s) || fail "hostname -s failed"
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
start_s=$(date +%s)

# One run at a time on this machine (two test sessions starting together would race for the daemons).
# The daemons are started with fd 9 closed: one that inherited it would hold the lock for its lifetime
# (daemons started by the script's first version do: hence the file's new name).
if command -v flock >/dev/null 2>&1; then
    exec 9>/run/slurm_local.v2.lock
    flock -w 900 9 || fail "another slurm_local.sh holds /run/slurm_local.v2.lock"
fi

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }

# --- 1. packages -------------------------------------------------------------------------------
missing=()
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null 2>&1 || missing+=(slurmdbd)
    command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
fi
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
        runuser -u munge -- munged --force >/tmp/slurm_local_munged.log 2>&1 9>&-
    else
        munged --force >/tmp/slurm_local_munged.log 2>&1 9>&-
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
# Written by scripts/slurm_local.sh: a single-node cluster for the tests.
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
ACCOUNTING_LINES
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Short scheduling loops: a job whose begin time passes (a requeued one) starts within seconds, not 60.
SchedulerParameters=sched_interval=5,bf_interval=5
# A requeued job waits cred_expire (default 120 s) before it may start again: 20 s is still ample to
# launch a step on one local node.
AuthInfo=cred_expire=20
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (default 30).
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
if [ "$ACCOUNTING" = 1 ]; then
    ACCT_LINES=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
else
    ACCT_LINES=AccountingStorageType=accounting_storage/none
fi
new_conf=${new_conf/ACCOUNTING_LINES/$ACCT_LINES}
conf_changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF"
    conf_changed=1
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- 4. accounting: MariaDB and slurmdbd -------------------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
    if ! mariadb -e 'SELECT 1' >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql: /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >>"$LOG_DIR/mariadb.log" 2>&1 \
            || fail "mariadb-install-db failed (see $LOG_DIR/mariadb.log)"
        # Socket only (no port to clash with) and a small buffer pool: the database holds a few jobs.
        setsid mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=64M \
            --innodb-lock-wait-timeout=900 >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null 9>&- &
        for _ in $(seq 300); do mariadb -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
        mariadb -e 'SELECT 1' >/dev/null 2>&1 \
            || fail "MariaDB does not answer after 30s: $(tail -n1 "$LOG_DIR/mariadb.log" 2>/dev/null)"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local-ci';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" >/dev/null 2>&1 \
        || fail "could not create the accounting database in MariaDB"
    new_dbd="# Written by scripts/slurm_local.sh: accounting for the single-node test cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-local-ci
StorageLoc=slurm_acct_db"
    if [ "$(cat "$CONF_DIR/slurmdbd.conf" 2>/dev/null)" != "$new_dbd" ]; then
        printf '%s\n' "$new_dbd" >"$CONF_DIR/slurmdbd.conf"
        if running /run/slurm/slurmdbd.pid; then
            pid=$(cat /run/slurm/slurmdbd.pid); kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    chmod 0600 "$CONF_DIR/slurmdbd.conf"  # slurmdbd refuses a readable file holding the password
    if ! running /run/slurm/slurmdbd.pid; then
        slurmdbd >>"$LOG_DIR/slurmdbd.stdout" 2>&1 9>&- \
            || fail "slurmdbd did not start: $(tail -n1 "$LOG_DIR/slurmdbd.log" 2>/dev/null)"
    fi
    for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
    sacctmgr -n list cluster >/dev/null 2>&1 \
        || fail "slurmdbd does not answer after 20s: $(tail -n1 "$LOG_DIR/slurmdbd.log" 2>/dev/null)"
fi

# --- 5. slurmctld and slurmd -------------------------------------------------------------------
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
    slurmctld >>"$LOG_DIR/slurmctld.stdout" 2>&1 9>&- \
        || fail "slurmctld did not start: $(tail -n1 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stdout" 2>/dev/null | tr '\n' ' ')"
fi
if ! running /run/slurm/slurmd.pid; then
    slurmd >>"$LOG_DIR/slurmd.stdout" 2>&1 9>&- \
        || fail "slurmd did not start: $(tail -n1 "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.stdout" 2>/dev/null | tr '\n' ' ')"
fi

# --- 6. wait for the node ----------------------------------------------------------------------
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
echo "slurm_local: ready in $(( $(date +%s) - start_s ))s: node $HOST ($CPUS CPUs, ${MEM_MB} MB) $state in partition debug, accounting: $([ "$ACCOUNTING" = 1 ] && echo "slurmdbd (sacct works)" || echo "none (sacct fails)")"
