#!/usr/bin/env bash
# Start a one-node SLURM cluster for the tests on 127.0.0.1 only, and print the line the caller
# exports:
#   SWEEPER_TEST_SLURM_CONF=/tmp/sweeper-slurm/slurm.conf
# (the tests give it to sbatch, squeue, sacct and scancel as SLURM_CONF). Installs Debian's
# slurm-wlm, slurmdbd, munge and mariadb-server with apt-get when they are missing. Every daemon
# runs straight from this script (no systemd), as root (slurmd starts jobs as their owners), with
# its configuration, state, sockets and logs in one folder: munged, MariaDB (only for slurmdbd,
# the accounting that `sacct` reads and submitit asks to learn how a job ended), slurmdbd,
# slurmctld and slurmd; one partition, `debug`, holds the machine's cores and memory, and two
# simulated GPUs (gres gpu:2: character devices in the folder, twins of /dev/null, which SLURM
# hands out and names in each job's CUDA_VISIBLE_DEVICES).
# Run it again and it reuses what it started before. Everything else it says goes to stderr.
#   SWEEPER_SLURM_DIR   configuration, state, sockets and logs (default /tmp/sweeper-slurm)
#   SWEEPER_SLURM_PORT  first of four ports on 127.0.0.1 (default 56817: slurmctld, slurmd,
#                       slurmdbd, MariaDB), away from a system cluster's 6817-6819
set -euo pipefail
dir=${SWEEPER_SLURM_DIR:-/tmp/sweeper-slurm}
port=${SWEEPER_SLURM_PORT:-56817}
ctld_port=$port slurmd_port=$((port + 1)) dbd_port=$((port + 2)) db_port=$((port + 3))
cluster=sweeper
account=sweeper

say() { echo "start_slurm: $*" >&2; }
fail() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root: slurmd starts each job as the user who submitted it"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v munged >/dev/null \
  || ! command -v mariadbd >/dev/null; then
  say "installing slurm-wlm, slurmdbd, munge and mariadb-server with apt-get"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >&2
fi

# running PIDFILE: whether the process that wrote PIDFILE is alive.
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# wait_for WHAT COMMAND...: until COMMAND succeeds, for at most 60 s.
wait_for() {
  local what=$1 until=$((SECONDS + 60))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || fail "$what did not come up within 60 s; see the logs in $dir"
    sleep 0.5
  done
}
secret() { # secret FILE: a password kept in FILE, made once (URL-safe characters)
  [ -s "$1" ] || { head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24 >"$1"; chmod 600 "$1"; }
  cat "$1"
}

mkdir -p "$dir"/{munge,mysql,state,spool}
chmod 700 "$dir" "$dir/munge"

# --- munge: the credentials every SLURM daemon and command checks ----------------------------
munge_socket=$dir/munge/munge.socket
if [ ! -s "$dir/munge/munge.key" ]; then
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
fi
if ! running "$dir/munge/munged.pid"; then
  say "starting munged"
  # --force: as root, munged refuses the folder's ownership checks otherwise.
  munged --force --socket="$munge_socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" >&2
fi
wait_for munged munge --socket="$munge_socket" -n

# --- MariaDB: slurmdbd's store ----------------------------------------------------------------
db_password=$(secret "$dir/mysql/password")
db_socket=$dir/mysql/mysqld.sock
if [ ! -d "$dir/mysql/data/mysql" ]; then
  say "initialising MariaDB in $dir/mysql/data"
  mariadb-install-db --user=root --datadir="$dir/mysql/data" --auth-root-authentication-method=socket \
    --skip-test-db >"$dir/mysql/install.log" 2>&1 || fail "mariadb-install-db failed; see $dir/mysql/install.log"
fi
if ! running "$dir/mysql/mysqld.pid"; then
  say "starting MariaDB on 127.0.0.1:$db_port"
  mariadbd --no-defaults --user=root --datadir="$dir/mysql/data" --socket="$db_socket" \
    --pid-file="$dir/mysql/mysqld.pid" --log-error="$dir/mysql/mysqld.log" \
    --bind-address=127.0.0.1 --port="$db_port" --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
fi
wait_for MariaDB mariadb --no-defaults --socket="$db_socket" -u root -e "SELECT 1"
mariadb --no-defaults --socket="$db_socket" -u root -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# --- configuration ----------------------------------------------------------------------------
node=$(hostname -s)
cpus=$(nproc)
memory_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512)) # leave the daemons some
# Two simulated GPUs: SLURM wants a character device for each (these are /dev/null's twins).
gpus=2
for gpu in 0 1; do
  [ -c "$dir/gpu$gpu" ] || { rm -f "$dir/gpu$gpu"; mknod -m 666 "$dir/gpu$gpu" c 1 3 2>/dev/null; } || gpus=0
done
[ "$gpus" -gt 0 ] || say "no simulated GPUs: mknod is not allowed here (the GPU request tests will skip)"
before=$(cat "$dir/slurm.conf" "$dir/gres.conf" 2>/dev/null || true)
cat >"$dir/slurm.conf" <<EOF
# Made by scripts/start_slurm.sh: a one-node cluster on 127.0.0.1 for sweeper's tests.
ClusterName=$cluster
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in a container: processes are tracked by their parents, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
# A job past its time limit, or cancelled, has 5 s between SIGTERM and SIGKILL (default 30).
KillWait=5
# Jobs ended are kept in slurmctld for 5 minutes; sacct has them for good.
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# The munge socket for connections to slurmdbd (AuthInfo's is not used for them).
AccountingStoragePass=$munge_socket
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$gpus" -gt 0 ]; then echo "NodeName=$node Name=gpu File=$dir/gpu[0-1]" >"$dir/gres.conf"; else : >"$dir/gres.conf"; fi
cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$munge_socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
LogFile=$dir/slurmdbd.log
PidFile=$dir/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
chmod 600 "$dir/slurmdbd.conf" # it holds the database password; slurmdbd insists
export SLURM_CONF=$dir/slurm.conf

# --- the daemons ------------------------------------------------------------------------------
# stop PIDFILE: end the daemon that wrote it, and wait until it is gone.
stop() {
  running "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
}
if [ "$before" != "$(cat "$dir/slurm.conf" "$dir/gres.conf")" ]; then
  # A cluster started with other settings (another machine size, ports, GPUs) starts again.
  stop "$dir/slurmd.pid"
  stop "$dir/slurmctld.pid"
fi
if ! running "$dir/slurmdbd.pid"; then
  say "starting slurmdbd on 127.0.0.1:$dbd_port"
  slurmdbd >&2 # reads slurmdbd.conf beside $SLURM_CONF
fi
wait_for slurmdbd sacctmgr -i -n list cluster
if [ -z "$(sacctmgr -n -P list cluster "$cluster" format=cluster 2>/dev/null)" ]; then
  sacctmgr -i add cluster "$cluster" >&2
fi
if ! running "$dir/slurmctld.pid"; then
  say "starting slurmctld on 127.0.0.1:$ctld_port"
  slurmctld -f "$dir/slurm.conf" >&2
fi
wait_for slurmctld scontrol ping
if ! running "$dir/slurmd.pid"; then
  say "starting slurmd on 127.0.0.1:$slurmd_port"
  slurmd -f "$dir/slurm.conf" >&2
fi
# An account for --account (`launcher.account`), with root in it, once slurmctld knows the cluster.
if [ -z "$(sacctmgr -n -P list account "$account" format=account 2>/dev/null)" ]; then
  sacctmgr -i add account "$account" cluster="$cluster" description="sweeper tests" >&2
  sacctmgr -i add user root account="$account" cluster="$cluster" >&2
fi
node_ready() { sinfo -h -N -n "$node" -o %t | grep -qE '^(idle|mix|alloc)'; }
if ! node_ready; then
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true # down from an earlier run
fi
wait_for "node $node" node_ready
say "ready: partition debug, node $node, $cpus CPUs, ${memory_mb} MB, gres gpu:$gpus (simulated)"
echo "SWEEPER_TEST_SLURM_CONF=$dir/slurm.conf"
