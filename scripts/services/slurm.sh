#!/usr/bin/env bash
# A real Slurm (Debian's packages, munge) with fake GPU GRES, and an OpenSSH server on 127.0.0.1
# with a test user and key: what the Slurm tests (tests/slurm) talk to, over SSH.
#
# The one machine is two Slurm nodes (Slurm's multiple-slurmd: Debian builds it with
# --enable-multiple-slurmd, `scontrol show config` says MULTIPLE_SLURMD = Yes): node 1 is named
# after the host, node 2 is "<host>-2"; both have NodeHostname=<host>, NodeAddr=127.0.0.1, a port
# of their own, and the same CPUs, memory and fake GPUs. Partition "debug" (the default) is node 1
# alone, as a one-node cluster; partition "gang" is both nodes, for multi-node (gang) jobs.
#
#   bash scripts/services/slurm.sh up     # install (root, Debian) and start; a second 'up' changes nothing
#   bash scripts/services/slurm.sh down   # stop the daemons by their recorded PIDs
#   bash scripts/services/slurm.sh status # exit 0 when everything answers
#
# Without root or apt-get it prints why and exits 0: the tests that need it then skip with that
# reason (and fail under CI=true). No systemd is needed: daemons run under setsid, their PIDs in
# $COOP_SLURM_DIR/run. The tests read the key and known_hosts from $COOP_SLURM_DIR/ssh.
set -Eeuo pipefail

BASE=${COOP_SLURM_DIR:-/tmp/coop-slurm}
SSH_PORT=${COOP_SLURM_SSH_PORT:-2222}
TUSER=${COOP_SLURM_USER:-cooptest}
GPU_TYPE=rtx4090
NGPU=2 # per node
HOST=$(hostname -s)
NODES=("$HOST" "$HOST-2") # Slurm node names: one slurmd each (slurmd -N NAME)
NODE_PORTS=(6818 6821)    # each node's slurmd port (6819, 6820: slurmdbd's and slurmrestd's)
# slurm-wlm without its recommends is these (12 packages instead of 48); sacct is in slurm-client
PKGS="slurmctld slurmd slurm-client munge openssh-server"

log() { printf 'slurm.sh: %s\n' "$*"; }
cannot() {
    log "cannot set up Slurm: $*"
    log "the Slurm tests will skip (under CI=true they fail)"
    exit 0
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_pidfile() { # FILE SECONDS: the pidfile exists and names a live process
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$1" && return 0
        sleep 0.1
    done
    log "timed out waiting for $1"
    return 1
}

start_daemon() { # NAME PIDFILE CMD... (CMD stays in the foreground, in its own session)
    local name=$1 pidf=$2
    shift 2
    rm -f "$pidf"
    setsid "$@" >"$BASE/log/$name.out" 2>&1 </dev/null &
    wait_pidfile "$pidf" 20 || { tail -5 "$BASE/log/$name.out" >&2; return 1; }
}

stop_pidfile() { # NAME PIDFILE EXPECTED_COMM: TERM, then KILL after 10 s; only that PID
    local name=$1 pidf=$2 comm=$3 p i
    [ -s "$pidf" ] || return 0
    p=$(cat "$pidf")
    if [ "$(ps -o comm= -p "$p" 2>/dev/null)" = "$comm" ]; then
        kill -TERM "$p"
        for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p"
        log "$name (pid $p) stopped"
    fi
    rm -f "$pidf"
}

ssh_answers() { (: </dev/tcp/127.0.0.1/"$SSH_PORT") 2>/dev/null; }

slurmds_alive() {
    local n
    for n in "${NODES[@]}"; do alive "$BASE/run/slurmd-$n.pid" || return 1; done
}

node_states() { # the nodes' states, each state once, e.g. "idle" or "idle,unknown"
    sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | awk '{print $2}' | sort -u | paste -sd,
}

is_up() {
    alive /run/munge/munged.pid && alive "$BASE/run/slurmctld.pid" && slurmds_alive &&
        alive "$BASE/run/sshd.pid" && ssh_answers && [ -s "$BASE/ssh/${TUSER}_key" ] &&
        [ "$(sinfo -h -N -o %N 2>/dev/null | sort -u | wc -l)" = "${#NODES[@]}" ]
}

install_packages() {
    local missing=0 b
    for b in slurmctld slurmd sbatch munged mungekey sshd; do
        command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || missing=1
    done
    [ $missing = 0 ] && return 0
    [ "$(id -u)" = 0 ] || cannot "not root, and Slurm/munge/sshd are not installed"
    command -v apt-get >/dev/null || cannot "no apt-get here (not Debian), and Slurm is not installed"
    export DEBIAN_FRONTEND=noninteractive
    local added_policy=0
    # Debian's postinst scripts would start munged and an sshd on port 22: refuse them (exit 101).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    mkdir -p "$BASE"
    log "installing $PKGS (apt-get)..."
    local rc=0
    # shellcheck disable=SC2086
    { apt-get update -q && apt-get install -y -q --no-install-recommends $PKGS; } >"$BASE/install.log" 2>&1 || rc=$?
    [ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ $rc != 0 ]; then
        tail -5 "$BASE/install.log"
        cannot "apt-get install failed (exit $rc; see $BASE/install.log)"
    fi
}

write_config() {
    local host=$HOST hw mem i
    hw=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //; s/ ?RealMemory=[0-9]+//')
    mem=$(($(awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo) * 9 / 10))
    install -d /etc/slurm
    for f in slurm.conf gres.conf; do # keep what was there, once; 'down' puts it back
        if [ -e "/etc/slurm/$f" ] && [ ! -e "$BASE/orig/$f" ]; then cp -p "/etc/slurm/$f" "$BASE/orig/$f"; fi
    done
    cat >/etc/slurm/slurm.conf <<EOF
# written by coop scripts/services/slurm.sh: a one-machine test cluster of two nodes (multiple-slurmd)
ClusterName=cooptest
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
StateSaveLocation=${BASE}/spool/ctld
# %n: the node's name (one slurmd per node)
SlurmdSpoolDir=${BASE}/spool/d/%n
SlurmctldPidFile=${BASE}/run/slurmctld.pid
SlurmdPidFile=${BASE}/run/slurmd-%n.pid
SlurmctldLogFile=${BASE}/log/slurmctld.log
SlurmdLogFile=${BASE}/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
# no slurmdbd here: finished jobs stay visible to squeue --states=all for an hour (default 300 s)
MinJobAge=3600
InactiveLimit=0
# a job past its time limit gets SIGTERM, then SIGKILL 2 s later; no grace beyond the limit
KillWait=2
OverTimeLimit=0
SchedulerType=sched/backfill
# the default batch_sched_delay=3 holds every sbatch ~3 s before it may start
SchedulerParameters=batch_sched_delay=0
EOF
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$i]} NodeHostname=${host} NodeAddr=127.0.0.1 Port=${NODE_PORTS[$i]} ${hw}" \
            "RealMemory=${mem} Gres=gpu:${GPU_TYPE}:${NGPU} State=UNKNOWN" >>/etc/slurm/slurm.conf
    done
    cat >>/etc/slurm/slurm.conf <<EOF
PartitionName=debug Nodes=${NODES[0]} Default=YES MaxTime=INFINITE State=UP
PartitionName=gang Nodes=$(IFS=,; echo "${NODES[*]}") MaxTime=INFINITE State=UP
EOF
    # gres/gpu wants character devices: major 195 (nvidia) without a driver is harmless, nothing
    # opens them. Each node has devices of its own (fakegpu0-1 on node 1, fakegpu2-3 on node 2).
    : >/etc/slurm/gres.conf
    local first last g
    for i in "${!NODES[@]}"; do
        first=$((i * NGPU)) last=$((i * NGPU + NGPU - 1))
        for ((g = first; g <= last; g++)); do
            rm -f "$BASE/dev/fakegpu$g"
            mknod -m 666 "$BASE/dev/fakegpu$g" c 195 "$g"
        done
        echo "NodeName=${NODES[$i]} Name=gpu Type=${GPU_TYPE} File=${BASE}/dev/fakegpu[${first}-${last}]" >>/etc/slurm/gres.conf
    done
}

start_sshd() {
    if ! id "$TUSER" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$TUSER"
    fi
    usermod -p '*' "$TUSER" # useradd leaves it locked ('!'): sshd with UsePAM no refuses locked accounts
    if [ ! -s "$BASE/ssh/${TUSER}_key" ]; then
        rm -f "$BASE"/ssh/{ssh_host_ed25519_key,${TUSER}_key}{,.pub}
        ssh-keygen -q -t ed25519 -N '' -f "$BASE/ssh/ssh_host_ed25519_key"
        ssh-keygen -q -t ed25519 -N '' -f "$BASE/ssh/${TUSER}_key" -C "$TUSER@coop-test"
    fi
    local home
    home=$(getent passwd "$TUSER" | cut -d: -f6)
    install -d -m 700 -o "$TUSER" -g "$TUSER" "$home/.ssh"
    install -m 600 -o "$TUSER" -g "$TUSER" "$BASE/ssh/${TUSER}_key.pub" "$home/.ssh/authorized_keys"
    echo "[127.0.0.1]:${SSH_PORT} $(cut -d' ' -f1,2 "$BASE/ssh/ssh_host_ed25519_key.pub")" >"$BASE/ssh/known_hosts"
    install -d -m 755 /run/sshd # privilege separation directory
    cat >"$BASE/ssh/sshd_config" <<EOF
Port ${SSH_PORT}
ListenAddress 127.0.0.1
HostKey ${BASE}/ssh/ssh_host_ed25519_key
PidFile ${BASE}/run/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AllowUsers ${TUSER}
X11Forwarding no
PrintMotd no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    /usr/sbin/sshd -t -f "$BASE/ssh/sshd_config"
    start_daemon sshd "$BASE/run/sshd.pid" /usr/sbin/sshd -D -e -f "$BASE/ssh/sshd_config"
    local i
    for ((i = 0; i < 50; i++)); do ssh_answers && break; sleep 0.1; done
}

up() {
    [ "$(id -u)" = 0 ] || cannot "not root: the test cluster needs root (munge, slurmd, sshd)"
    mkdir -p "$BASE"
    if is_up; then
        log "already up (ssh -p $SSH_PORT -i $BASE/ssh/${TUSER}_key $TUSER@127.0.0.1)"
        return 0
    fi
    install_packages
    # from here on, a step that fails leaves the tests to skip (and say why), not make test to stop
    trap 'down_daemons >/dev/null 2>&1 || true; cannot "starting it failed at line $LINENO; see $BASE/log"' ERR
    down_daemons # whatever half of it was left running
    rm -rf "$BASE/spool" # jobs of an earlier run: the cluster starts with an empty queue
    mkdir -p "$BASE"/{run,log,orig,spool/ctld,spool/d,dev,ssh}
    local n
    for n in "${NODES[@]}"; do mkdir -p "$BASE/spool/d/$n"; done
    chmod 700 "$BASE/ssh"
    chown slurm:slurm "$BASE/spool/ctld" "$BASE/log"
    if [ ! -s /etc/munge/munge.key ]; then # normally made by munge's postinst
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    start_daemon munged /run/munge/munged.pid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    write_config
    start_daemon slurmctld "$BASE/run/slurmctld.pid" /usr/sbin/slurmctld -D
    for n in "${NODES[@]}"; do
        start_daemon "slurmd-$n" "$BASE/run/slurmd-$n.pid" /usr/sbin/slurmd -D -N "$n"
    done
    local i state=""
    for ((i = 0; i < 60; i++)); do
        state=$(node_states)
        [ "$state" = idle ] && break
        sleep 0.5
    done
    [ "$state" = idle ] || cannot "the nodes did not become idle (states: ${state:-none}); see $BASE/log"
    start_sshd
    log "up: $(sinfo -h -o '%P %N %G %T' | paste -sd';'); ssh -p $SSH_PORT -i $BASE/ssh/${TUSER}_key $TUSER@127.0.0.1"
}

down_daemons() {
    if alive "$BASE/run/slurmctld.pid" && command -v squeue >/dev/null; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        local i
        for ((i = 0; i < 40; i++)); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.25; done
    fi
    stop_pidfile sshd "$BASE/run/sshd.pid" sshd
    local n
    for n in "${NODES[@]}"; do stop_pidfile "slurmd $n" "$BASE/run/slurmd-$n.pid" slurmd; done
    stop_pidfile slurmd "$BASE/run/slurmd.pid" slurmd # the one slurmd of the one-node version
    stop_pidfile slurmctld "$BASE/run/slurmctld.pid" slurmctld
    stop_pidfile munged /run/munge/munged.pid munged
}

down() {
    [ -d "$BASE" ] || { log "nothing to stop"; return 0; }
    down_daemons
    for f in slurm.conf gres.conf; do
        if [ -e "$BASE/orig/$f" ]; then mv -f "$BASE/orig/$f" "/etc/slurm/$f"; fi
    done
    rm -rf "$BASE/spool" # saved job state: the next 'up' starts with an empty queue
    log "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) if is_up; then log "up"; else log "not running"; exit 1; fi ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
