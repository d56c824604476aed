#!/usr/bin/env bash
# Captures the Slurm outputs the parser tests read, from a real cluster over SSH, with the exact
# commands and formats Coop uses (coop/server/backends/slurm/commands.py). Usage, against the test cluster:
#   SSH="ssh -p 2222 -i /tmp/coop-slurm/ssh/cooptest_key -o UserKnownHostsFile=/tmp/coop-slurm/ssh/known_hosts cooptest@127.0.0.1" \
#     bash tests/data/slurm/capture.sh tests/data/slurm
# The files in this folder came from Debian 12's Slurm 22.05.8 (one node, fake GPU GRES) with
# slurmdbd, so that plain sacct answers; TIMEOUT=1 adds a job killed at its 1-minute limit.
set -euo pipefail
OUT=${1:?output folder}
: "${SSH:?set SSH to the ssh command line}"
US=$'\x1f'
R() { $SSH "$@"; }
SQ="%i${US}%j${US}%T${US}%r"
SACCT="JobIDRaw,JobName,State,ExitCode,Elapsed"
submit() { R "sbatch --parsable --job-name=$1 $2"; }
wait_done() { # JOBID
    local i st
    for ((i = 0; i < 240; i++)); do
        st=$(R "squeue --states=all -h -j $1 -o %T")
        case "$st" in PENDING | RUNNING | CONFIGURING | COMPLETING | "") sleep 0.5 ;; *) return 0 ;; esac
    done
}
ok=$(submit coop-1-1 "--wrap 'echo hello'")
bad=$(submit coop-2-1 "--wrap 'exit 3'")
gpu=$(submit coop-3-1 "--gres=gpu:rtx4090:1 --wrap 'echo CVD=\$CUDA_VISIBLE_DEVICES'")
sig=$(submit coop-4-1 "--wrap 'kill -9 \$\$'")
cancel=$(submit coop-5-1 "--wrap 'sleep 600'")
held=$(submit coop-6-1 "--hold --wrap 'true'")
run=$(submit coop-7-1 "--wrap 'sleep 600'")
to=""
if [ "${TIMEOUT:-0}" = 1 ]; then to=$(submit coop-8-1 "--time=1 --wrap 'sleep 600'"); fi
for j in $ok $bad $gpu $sig; do wait_done "$j"; done
R "scancel $cancel"
wait_done "$cancel"
sleep 2
R "sinfo -N -h -o '%N${US}%c${US}%m${US}%G${US}%T${US}%C${US}%P'" >"$OUT/sinfo-mixed.txt"
R "squeue --states=all -h -o '$SQ'" >"$OUT/squeue-all.txt"
R "squeue --states=all -h --name=coop-1-1 -o '$SQ'" >"$OUT/squeue-by-name.txt"
R "squeue --states=all -h --name=coop-999-1 -o '$SQ'" >"$OUT/squeue-none.txt"
for pair in "completed:$ok" "failed:$bad" "signal:$sig" "cancelled:$cancel" "pending:$held" "running:$run"; do
    R "scontrol -o show job ${pair#*:}" >"$OUT/scontrol-${pair%%:*}.txt"
done
if [ -n "$to" ]; then
    wait_done "$to"
    R "scontrol -o show job $to" >"$OUT/scontrol-timeout.txt"
fi
R "scancel $run $held"
wait_done "$run"
sleep 3
R "squeue --states=all -h -o '$SQ'" >"$OUT/squeue-all-final.txt"
if R "sacct -n -X -P --delimiter='$US' -S now-1days -o $SACCT" >"$OUT/sacct.txt" 2>"$OUT/sacct.err"; then
    R "sacct -n -X -P --delimiter='$US' -S now-1days --name=coop-2-1 -o $SACCT" >"$OUT/sacct-by-name.txt"
    rm -f "$OUT/sacct.err"
fi
