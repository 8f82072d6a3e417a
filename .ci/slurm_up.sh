#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine for the launcher tests (tests/test_slurm.py).
#
# Debian's packages (Slurm 22.05, munge, MariaDB) run as plain background processes, no systemd:
# munged -> mariadbd -> slurmdbd (accounting: submitit reads job states through sacct) -> slurmctld
# -> slurmd. State, spool, logs and the database live under $SLURM_STATE (default /tmp/peftbench-slurm);
# the configuration goes to /etc/slurm where sbatch / sacct look for it. Idempotent: when the cluster
# already answers it returns at once. With --install it first installs the packages (apt, CI only).
# On success it prints "slurm_up: up ..." and exits 0; otherwise one line "slurm_up: cannot start
# Slurm: <reason>" (details in $SLURM_STATE/log) and exits 1. Needs root.
set -uo pipefail

STATE=${SLURM_STATE:-/tmp/peftbench-slurm}
PKGS="slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
fail() { echo "slurm_up: cannot start Slurm: $*" >&2; exit 1; }
up() { timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }
# wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
wait_for() {
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$what did not come up within ${secs} s (logs: $STATE/log)"
}

[ "$(id -u)" = 0 ] || fail "needs root (munged, slurmd and the database are started here as system daemons)"
if [ "${1:-}" = "--install" ] && ! command -v slurmctld >/dev/null; then
    command -v apt-get >/dev/null || fail "Slurm is not installed and there is no apt-get to install it"
    export DEBIAN_FRONTEND=noninteractive
    # bounded: a mirror that never answers must not eat CI's time (the tests then skip with this reason)
    { timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq --no-install-recommends $PKGS; } \
        >"/tmp/slurm_apt.log" 2>&1 \
        || fail "apt-get install $PKGS failed (see /tmp/slurm_apt.log: $(tail -n 1 /tmp/slurm_apt.log))"
fi
for exe in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sbatch sacct; do
    command -v "$exe" >/dev/null || fail "$exe is not installed (apt-get install $PKGS, or run with --install)"
done
if up; then echo "slurm_up: up (already running)"; exit 0; fi

mkdir -p "$STATE"/{log,ctld,spool,run,mysql} /etc/slurm /run/munge /run/mysqld
HOST=$(hostname -s)

# --- munge: authentication between the Slurm daemons and clients
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
    || fail "cannot create /etc/munge/munge.key"
chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force >>"$STATE/log/munged.log" 2>&1 || fail "munged did not start"
    wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# --- MariaDB: slurmdbd's storage (a private data folder, TCP on 127.0.0.1 only)
SOCK="$STATE/run/mysqld.sock"
if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
        >"$STATE/log/mysql-install.log" 2>&1 || fail "mariadb-install-db failed (see $STATE/log/mysql-install.log)"
fi
if ! mariadb-admin --socket="$SOCK" ping >/dev/null 2>&1; then
    mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$SOCK" --port=3306 \
        --bind-address=127.0.0.1 --pid-file="$STATE/run/mysqld.pid" --log-error="$STATE/log/mysqld.log" \
        >/dev/null 2>&1 &
    wait_for 30 MariaDB mariadb-admin --socket="$SOCK" ping
fi
mariadb --socket="$SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
    || fail "cannot create the accounting database in MariaDB"

# --- configuration
cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
chmod 600 /etc/slurm/slurmdbd.conf  # slurmdbd refuses a configuration with a password that others can read

NODE=$(slurmd -C | head -n 1)
[ -n "$NODE" ] || fail "slurmd -C printed no node line"
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=peftbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# --- Slurm daemons (each backgrounds itself; a stopped one may linger briefly as a zombie)
pidof_file() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pidof_file "$STATE/run/slurmdbd.pid" || slurmdbd >>"$STATE/log/slurmdbd.out" 2>&1 || fail "slurmdbd did not start"
wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
pidof_file "$STATE/run/slurmctld.pid" || slurmctld >>"$STATE/log/slurmctld.out" 2>&1 || fail "slurmctld did not start"
wait_for 30 slurmctld scontrol ping
pidof_file "$STATE/run/slurmd.pid" || slurmd >>"$STATE/log/slurmd.out" 2>&1 || fail "slurmd did not start"
wait_for 30 "the node ($NODE)" up
echo "slurm_up: up ($(sinfo -h -o '%P %D node(s) %c CPUs %t'); state in $STATE)"
