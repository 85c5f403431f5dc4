#!/usr/bin/env bash
# local-slurm.sh - the project's throw-away, single-host Slurm cluster for tests, CI and trying harness
# on a laptop: slurmctld + slurmdbd (MariaDB) + NODES virtual slurmd on loopback.
# Tested on Debian 12 (bookworm) x86_64, as root, WITHOUT systemd as PID 1:
#   slurm-wlm 22.05.8-4+deb12u3, munge 0.5.15-2+deb12u1, mariadb-server 10.11 (optional).
# Everything (config, state, logs, sockets, DB files) lives under $LAB_DIR; nothing is
# written to /etc/slurm or /run/munge, so clients must see SLURM_CONF (see `env`).
#
# Usage (as root):
#   ./local-slurm.sh up          # install if needed, fresh config+state, start, wait for idle
#   eval "$(./local-slurm.sh env)"   # -> export SLURM_CONF=...; then sbatch/squeue/sacct/submitit work
#   ./local-slurm.sh selftest    # 4-task array + afterok dependent job, checked
#   ./local-slurm.sh status
#   ./local-slurm.sh down        # cancel jobs, stop the daemons this script started (by pidfile)
#   ./local-slurm.sh clean       # down + rm -rf $LAB_DIR
#   ./local-slurm.sh install     # only the apt part (idempotent)
#
# Knobs (environment variables):
#   LAB_DIR=${TMPDIR:-/tmp}/harness-slurm   root of all runtime files (wiped by `up` and `clean`)
#   NODES=3          virtual compute nodes n1..nN: one slurmd per node on this host
#                    (Debian's slurmd supports this: `slurmd -N nX`, per-node Port)
#   CPUS=$(nproc)    CPUs advertised per virtual node (may exceed real cores: config_overrides); the
#                    host's usable cores, not OMP_NUM_THREADS (which GNU nproc reports when it is set)
#   MEM_MB=90% RAM   RealMemory per node (memory is NOT a consumable resource here: CR_Core)
#   WITH_DBD=1       also run MariaDB + slurmdbd so `sacct` works. submitit polls sacct for job
#                    states; without it, states read UNKNOWN and a job that never writes a result
#                    (cancelled, DependencyNeverSatisfied, node failure) makes job.result() hang.
#   SKIP_INSTALL=1   do not touch apt in `up`
#   PARTITION=debug  name of the single default partition
#   SLURMCTLD_PORT=6817  SLURMDBD_PORT=6819  MYSQL_PORT=3307  SLURMD_PORT_BASE=17001
#   WAIT_S=60        how long `up` waits for all nodes to become idle
set -euo pipefail

LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/harness-slurm}
NODES=${NODES:-3}
CPUS=${CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
WITH_DBD=${WITH_DBD:-1}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PARTITION=${PARTITION:-debug}
CLUSTER=${CLUSTER:-lab}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMDBD_PORT=${SLURMDBD_PORT:-6819}
MYSQL_PORT=${MYSQL_PORT:-3307}          # not 3306: a distro mariadb.service may already hold it
SLURMD_PORT_BASE=${SLURMD_PORT_BASE:-17001}
WAIT_S=${WAIT_S:-60}
DB_PASS=${DB_PASS:-slurmpw}             # local loopback-only throw-away DB

ETC=$LAB_DIR/etc RUN=$LAB_DIR/run LOG=$LAB_DIR/log STATE=$LAB_DIR/state
MUNGE_DIR=$LAB_DIR/munge                # must be 0755 (socket dir), key goes in 0700 subdir
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
MYSQL_DIR=$LAB_DIR/mysql                # owned by mysql; mariadbd logs here (it can't write $LOG)
MYSQL_SOCK=$MYSQL_DIR/mysqld.sock
export SLURM_CONF=$ETC/slurm.conf        # daemons get -f too; slurmdbd finds slurmdbd.conf next to it

T_START=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }   # no bc needed
log() { printf '[local-slurm +%ss] %s\n' "$(since "$T_START")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (slurmd/munged need it)"; }
case "$LAB_DIR" in /?*/?*) ;; *) echo "refusing LAB_DIR='$LAB_DIR' (need an absolute path >= 2 levels deep)" >&2; exit 1 ;; esac

# wait_for <seconds> <command...>: poll every 0.1 s until the command succeeds
wait_for() {
  local t=$1; shift
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------- install
install_pkgs() {
  need_root
  local pkgs="slurm-wlm munge" missing=""
  [ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -z "$missing" ]; then log "packages already installed"; return; fi
  log "apt-get install$missing"
  apt-get update -qq
  # --no-install-recommends: 9 packages instead of ~43 (skips slurm-wlm-plugins & friends).
  # On a systemd host, postinst starts munge.service/mariadb.service: harmless, we use our own
  # socket/port. slurmd/slurmctld units need /etc/slurm/slurm.conf, which we never create.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  log "installed: $(dpkg-query -W -f='${Package}=${Version} ' $pkgs)"
}

# ---------------------------------------------------------------- config
write_configs() {
  local host mem real i
  host=$(hostname -s)
  real=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
  mem=${MEM_MB:-$(( real * 9 / 10 ))}

  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$MUNGE_DIR/etc"
  for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/d/n$i"; done   # SlurmdSpoolDir=.../%n must pre-exist

  # munge refuses to start unless: socket dir is world-executable, key dir/key private,
  # and it runs as the key owner (not root). Fresh key per cluster.
  if command -v mungekey >/dev/null; then
    mungekey --create --force --keyfile="$MUNGE_DIR/etc/munge.key"
  else
    dd if=/dev/urandom of="$MUNGE_DIR/etc/munge.key" bs=1 count=1024 status=none
  fi
  chown -R munge:munge "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"; chmod 0700 "$MUNGE_DIR/etc"; chmod 0600 "$MUNGE_DIR/etc/munge.key"

  cat > "$ETC/slurm.conf" <<EOF
# Generated by local-slurm.sh - single host, loopback only, no cgroups, no systemd.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$SLURMCTLD_PORT
# munge on a private socket: both AuthInfo (daemons/clients) and, for the slurmdbd
# persistent connection, AccountingStoragePass must name it, else they try /run/munge.
# cred_expire: a requeued job (a node failure retried, a preempted finetune) is held this long before it may
# start again (default 120 s). A one-host test cluster loads no environment and pages nothing out: 10 s.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroup/systemd dependence: works in containers and plain VMs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
# Cores only: memory requests (--mem) are checked against RealMemory but never block jobs.
SelectTypeParameters=CR_Core
# Trust the CPUs/RealMemory below instead of the detected hardware (allows CPUS > nproc).
SlurmdParameters=config_overrides
MpiDefault=none
# /usr/bin/mail is not installed -> "Configured MailProg is invalid" error without this.
MailProg=/bin/true
ReturnToService=2
KillWait=5
# Default batch_sched_delay=3 batches scheduling into 3 s ticks: each array wave / dependency
# stage then waits ~2-3 s. With 0 the background scheduler picks jobs up within ~1 s.
SchedulerParameters=batch_sched_delay=0
EOF
  if [ "$WITH_DBD" = 1 ]; then
    cat >> "$ETC/slurm.conf" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SLURMDBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
EOF
  else
    # No slurmdbd: plain `sacct` prints "Slurm accounting storage is disabled" (rc 1).
    # `sacct -c` reads this job-completion file, but does not understand array ids.
    cat >> "$ETC/slurm.conf" <<EOF
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
EOF
  fi
  # Virtual nodes: all on this host, distinct names/ports; each slurmd started with -N nX.
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$(( SLURMD_PORT_BASE + i - 1 )) CPUs=$CPUS RealMemory=$mem State=UNKNOWN" >> "$ETC/slurm.conf"
  done
  # LLN=YES (least-loaded node) spreads array tasks over the virtual nodes; the default
  # (pack onto the first node with free cores) would run a small array entirely on n1.
  local lln=NO; [ "$NODES" -gt 1 ] && lln=YES
  echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP LLN=$lln" >> "$ETC/slurm.conf"

  if [ "$WITH_DBD" = 1 ]; then
    mkdir -p "$MYSQL_DIR"; chown mysql:mysql "$MYSQL_DIR"
    cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$SLURMDBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a group/world-readable slurmdbd.conf
  fi
}

# ---------------------------------------------------------------- start
start_daemons() {
  need_root
  log "versions: $(slurmctld -V) / $(munged -V 2>&1 | head -1)"
  log "starting munged"
  runuser -u munge -- munged --key-file="$MUNGE_DIR/etc/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
    --log-file="$MUNGE_DIR/munged.log" --num-threads=10
  wait_for 10 sh -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'" \
    || die "munge not working; see $MUNGE_DIR/munged.log"

  if [ "$WITH_DBD" = 1 ]; then
    if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
      log "initialising MariaDB datadir"
      mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
        --skip-test-db > "$LOG/mariadb-install-db.log" 2>&1 || die "mariadb-install-db failed"
    fi
    log "starting mariadbd (127.0.0.1:$MYSQL_PORT)"
    # mariadbd does not daemonize: detach it fully (setsid, stdio closed) so a CI step
    # does not hang on an inherited stdout pipe. --user=mysql drops root itself.
    setsid -f mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
      --socket="$MYSQL_SOCK" --pid-file="$MYSQL_DIR/mysqld.pid" \
      --port="$MYSQL_PORT" --bind-address=127.0.0.1 --log-error="$MYSQL_DIR/mariadb.err" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1
    wait_for 30 mariadb-admin --no-defaults -S "$MYSQL_SOCK" -u root ping \
      || die "mariadbd not up; see $MYSQL_DIR/mariadb.err"
    wait_for 10 test -s "$MYSQL_DIR/mysqld.pid"
    mariadb --no-defaults -S "$MYSQL_SOCK" -u root -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    log "starting slurmdbd"
    slurmdbd            # daemonizes; reads $(dirname $SLURM_CONF)/slurmdbd.conf
    wait_for 60 sacctmgr -n show cluster || die "slurmdbd not answering; see $LOG/slurmdbd.log"
  fi

  log "starting slurmctld"
  slurmctld -f "$SLURM_CONF"        # daemonizes, writes $RUN/slurmctld.pid
  wait_for 30 scontrol ping || die "slurmctld not answering; see $LOG/slurmctld.log"
  local i
  for i in $(seq 1 "$NODES"); do
    log "starting slurmd n$i"
    slurmd -f "$SLURM_CONF" -N "n$i"   # daemonizes, writes $RUN/slurmd-n$i.pid
  done

  # All NODES nodes must report idle (sinfo -N prints one line per node).
  all_idle() { [ "$(sinfo -h -N -o '%N %t' | awk '$2=="idle"' | sort -u | wc -l)" -eq "$NODES" ]; }
  if ! wait_for "$WAIT_S" all_idle; then
    sinfo -N -l >&2 || true
    tail -n 20 "$LOG"/slurmctld.log "$LOG"/slurmd-*.log >&2 || true
    die "nodes not idle after ${WAIT_S}s"
  fi
  sinfo -N >&2
  # NB: slurmctld's first batch scheduling pass happens ~3 s after it starts, so the very
  # first sbatch job waits up to ~3 s; after that jobs start within ~1 s.
  log "cluster up: export SLURM_CONF=$SLURM_CONF"
}

# ---------------------------------------------------------------- stop
# alive <pid>: exists and is not a zombie (daemons are reparented to PID 1, which in
# containers may reap slowly; `kill -0` succeeds on zombies).
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
# stop_pid <pidfile> <expected /proc/PID/comm>: only ever signals the PID this script's
# daemons recorded, and only if that PID still is the expected program (never pkill).
stop_pid() {
  local f=$1 comm=$2 pid i
  [ -s "$f" ] || return 0
  pid=$(tr -dc '0-9' < "$f")
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$comm" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$comm ($pid) ignored SIGTERM, SIGKILL"; kill -KILL "$pid" || true; fi
    log "stopped $comm ($pid)"
  fi
  rm -f "$f"
}

stop_daemons() {
  need_root
  [ -d "$LAB_DIR" ] || { log "nothing to stop ($LAB_DIR missing)"; return 0; }
  # Cancel every job first so no slurmstepd / job process outlives the cluster.
  if [ -s "$RUN/slurmctld.pid" ] && scontrol ping >/dev/null 2>&1; then
    local jobs
    jobs=$(squeue -h -o '%A' | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"; scancel $jobs || true
      wait_for 20 sh -c '[ -z "$(squeue -h -o %A)" ]' || log "jobs still listed after 20s"
    fi
  fi
  local f
  for f in "$RUN"/slurmd-*.pid; do
    if [ -e "$f" ]; then stop_pid "$f" slurmd; fi
  done
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$MYSQL_DIR/mysqld.pid" mariadbd
  stop_pid "$MUNGE_DIR/munged.pid" munged
  log "all daemons stopped (files kept in $LAB_DIR)"
}

status() {
  local f
  for f in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" "$MYSQL_DIR/mysqld.pid" "$MUNGE_DIR/munged.pid"; do
    [ -s "$f" ] || continue
    local pid; pid=$(cat "$f")
    if alive "$pid"; then echo "running  $(cat /proc/"$pid"/comm) pid=$pid"; else echo "DEAD     $f"; fi
  done
  sinfo -N 2>/dev/null || echo "slurmctld not reachable"
  squeue 2>/dev/null || true
}

# ---------------------------------------------------------------- selftest
selftest() {
  local d=$LAB_DIR/selftest t0 a dep
  rm -rf "$d"; mkdir -p "$d"; cd "$d"
  t0=$(date +%s.%N)
  a=$(sbatch --parsable --array=0-3 -o 'arr_%A_%a.out' \
        --wrap 'echo "task $SLURM_ARRAY_TASK_ID on $SLURMD_NODENAME" > done_$SLURM_ARRAY_TASK_ID; sleep 1')
  dep=$(sbatch --parsable --dependency=afterok:"$a" --kill-on-invalid-dep=yes -o dep.out \
        --wrap 'ls done_* | wc -l > dep_saw')
  # poll (sbatch --wait polls every 2-10 s and inflates the measured time)
  wait_for 120 sh -c "[ -z \"\$(squeue -h -j $dep 2>/dev/null)\" ]" || die "selftest: job $dep still queued"
  local n; n=$(cat dep_saw 2>/dev/null || echo 0)
  log "array $a + dependent $dep finished in $(since "$t0") s; dependent saw $n/4 outputs"
  cat done_* >&2
  [ "$n" = 4 ] || die "selftest: dependent job ran before the array finished"
  if [ "$WITH_DBD" = 1 ]; then
    # accounting records reach slurmdbd asynchronously (seen: >1 s lag for one array task)
    wait_for 15 sh -c "[ \$(sacct -n -X -j $a,$dep -o JobID | wc -l) -ge 5 ]" || log "sacct incomplete after 15 s"
    sacct -j "$a,$dep" -X -o JobID,State,ExitCode,NodeList --parsable2 >&2
  else
    scontrol show job "$dep" | grep -E 'JobState|Dependency' >&2
  fi
  log "selftest OK"
}

case "${1:-}" in
  install)  install_pkgs ;;
  up)
    need_root
    [ "$SKIP_INSTALL" = 1 ] || install_pkgs
    stop_daemons                       # in case a previous cluster from this LAB_DIR is running
    rm -rf "$LAB_DIR"                  # fresh state every time: tests start from job id 1
    write_configs
    start_daemons
    log "startup total (incl. install step): $(since "$T_START") s" ;;
  down)     stop_daemons ;;
  clean)    stop_daemons; rm -rf "$LAB_DIR"; log "removed $LAB_DIR" ;;
  status)   status ;;
  env)      echo "export SLURM_CONF=$SLURM_CONF" ;;
  selftest) selftest ;;
  *) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 2 ;;
esac
