#!/bin/bash
# A private single-node Slurm on localhost, for trying glidewms with a real
# batch system:   sudo examples/local-slurm.sh start   (then: stop)
# Needs Debian's slurmctld, slurmd and slurm-client; no systemd, no munge.
# Everything lives under $ROOT (default /tmp/glidewms-slurm); /etc/slurm is
# not touched. Then: glidewms demo --entries examples/slurm-entries.yaml
set -euo pipefail
ROOT=${ROOT:-/tmp/glidewms-slurm}
CONF=$ROOT/slurm.conf
export SLURM_CONF=$CONF

start() {
  command -v slurmctld >/dev/null || { echo "install slurmctld slurmd slurm-client first" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "run as root (slurmd must start jobs as their users)" >&2; exit 1; }
  mkdir -p "$ROOT"/{state,spool}
  cat > "$CONF" <<CONF
ClusterName=glidewms
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/slurmctld.log
SlurmdLogFile=$ROOT/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  /usr/sbin/slurmctld -f "$CONF"
  /usr/sbin/slurmd -f "$CONF" -N localhost
  for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && { sinfo; echo "SLURM_CONF=$CONF"; return; }
    sleep 0.1
  done
  echo "Slurm did not come up; see $ROOT/slurmctld.log and $ROOT/slurmd.log" >&2
  exit 1
}

stop() {
  scontrol shutdown 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
