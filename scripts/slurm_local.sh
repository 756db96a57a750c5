#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for `launcher=slurm` and its tests.
#
#   sudo scripts/slurm_local.sh install   # apt-get: slurm-wlm, munge, slurmdbd, mariadb-server
#   sudo scripts/slurm_local.sh start     # munged, MariaDB, slurmdbd, slurmctld, slurmd; partition "debug"
#   scripts/slurm_local.sh status         # sinfo, and whether sacct answers
#   sudo scripts/slurm_local.sh stop      # cancels every job and stops the daemons
#
# Runs as root (as CI does). One node named after `hostname -s`, with this machine's cores and
# memory (less 1 GiB), proctrack/linuxproc and task/none (no cgroups needed), job accounting in
# slurmdbd on a local MariaDB (so `sacct`, which submitit polls for job states, answers), and all
# state, spool and logs under $SLURM_LOCAL_DIR (default /tmp/warmup-lab-slurm). It writes
# /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf, unless a slurm.conf this script did not write
# is there already: then it stops and says so (it never overwrites a real cluster's config).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/warmup-lab-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by warmup-lab scripts/slurm_local.sh"
NODE=$(hostname -s)
CLUSTER=warmuplab

die() { echo "slurm_local: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run it as root (sudo $0 $1)"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq "$((secs * 4))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "$what did not come up within ${secs}s (logs in $DIR/log)"
}

write_conf() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: this machine has a SLURM config of its own"
  fi
  mkdir -p /etc/slurm "$DIR"/{state,spool,log,run}
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  cat > "$CONF" <<EOF
$MARK: a single-node cluster (scripts/slurm_local.sh stop; then delete this file)
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
# a requeued job waits cred_expire seconds (default 120) before it may start again, and the main
# scheduler looks every sched_interval (default 60): a local test cluster need not wait that long
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=warmuplab
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge -n
}

start_mariadb() {
  if ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >"$DIR/log/mariadb.log" 2>&1 &)
    wait_for 60 MariaDB mysqladmin ping
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'warmuplab';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start() {
  need_root start
  command -v slurmctld >/dev/null || die "slurmctld is not installed: sudo $0 install"
  write_conf
  start_munge
  start_mariadb
  pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  wait_for 60 "the node $NODE" sh -c "sinfo -h -n $NODE -o %T | grep -qE 'idle|mix|alloc'"
  sacct -n -X -S now >/dev/null || die "sacct does not answer (accounting: $DIR/log/slurmdbd.log)"
  status
}

stop() {
  need_root stop
  scancel --full --quiet --user=root 2>/dev/null || true
  for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
  mysqladmin shutdown 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  for _ in $(seq 120); do  # until every daemon has exited (a start right after must not find one)
    alive=0
    for d in slurmd slurmctld slurmdbd munged mariadbd mysqld_safe; do pgrep -x "$d" >/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.25
  done
  echo "slurm_local: stopped (state in $DIR)"
}

status() {
  if ! command -v sinfo >/dev/null; then echo "slurm_local: not installed"; return 1; fi
  sinfo -N -o "%N %P %T %c cpus %m MB" || { echo "slurm_local: slurmctld does not answer"; return 1; }
  if sacct -n -X -S now >/dev/null 2>&1; then echo "accounting: sacct answers"; else echo "accounting: sacct fails"; fi
}

install_packages() {
  need_root install
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
