#!/usr/bin/env bash
# One device command of the mini-world recipe (docs/results/mini_world.md, "Recipe"): the run lives in
# runs/mini under the repository root (kept between the commands of one lease), stages run under a time limit
# that stops training with SIGINT (a checkpoint, no done.json: the next command resumes), and the named
# exports come back through $OUT.
#
#   bash tools/mini_lease.sh [--limit SECONDS] [--fetch stage,stage] [--models m,m] [--device D] [--smoke]
#                            [--run DIR] [--set STAGE:KEY=VALUE ...] [--tag NAME] [--part-bytes N] STAGES
#
# --run DIR (default runs/mini) and --set (vidforce mini --set: an ablation arm) let two arms share one GPU:
#   bash tools/mini_lease.sh ... STAGES & bash tools/mini_lease.sh --run runs/mini-c --set teacher:... STAGES; wait
# the files of a --run other than runs/mini come back prefixed with its name (mini-c-teacher-00001-of-00002...).
# Two commands may also train different stages of one run at once once their inputs are done (e.g.
# teacher_forcing & diffusion_forcing): --tag NAME keeps their small.tar apart (small-NAME.tar).
#
# Before it: stage directories packed on the development machine as out/carry/*.tar.xz, e.g.
#   (cd runs/mini-v2 && python3 -m tarfile -c ../../out/carry/teacher.tar.xz teacher)
# are unpacked into runs/mini (a stage already there is kept); wheels in .whl/ are installed
# (bash ../shared/tools/device-wheels.sh). The code that runs is the directory holding this script's tools/
# (carry a clean `git archive` of HEAD as out/snap so helpers' unfinished edits never reach the device).
# Back in $OUT: <stage>-<shard>.safetensors of every --fetch stage (bf16, <= 16 MiB each),
# results-videos-<model>.npz and results-probes.tar for --models, and small.tar with every stage's
# done.json, index and training log (gzipped). A file larger than --part-bytes (default 15 MiB: the device
# returns files of at most 16 MiB; a causal model's 20x-K video cache is ~50 MB) comes back in parts
# NAME.part-00, NAME.part-01, ...; join them with `cat NAME.part-* > NAME`.
set -uo pipefail
limit=530 fetch="" models="" device=cuda smoke="" rundir=runs/mini sets=() tag="" part=$((15 * 1024 * 1024))
while [ $# -gt 1 ]; do
  case "$1" in
    --run) rundir=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --tag) tag=-$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --smoke) smoke=--smoke; shift ;;
    --limit) limit=$2; shift 2 ;;
    --fetch) fetch=$2; shift 2 ;;
    --part-bytes) part=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    *) echo "mini_lease.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: mini_lease.sh [--limit S] [--fetch a,b] [--models m,n] [--device D] [--smoke] [--run DIR] [--set S:K=V] [--tag NAME] [--part-bytes N] STAGES" >&2
                  exit 2; }
stages=$1 root=$(pwd) code=$(cd "$(dirname "$0")/.." && pwd) run=$(pwd)/$rundir out=${OUT:-/tmp/out}
prefix=""
[ "$rundir" = runs/mini ] || prefix="$(basename "$rundir")-"
mkdir -p "$run" "$out"
if ls .whl/*.whl >/dev/null 2>&1; then      # once per machine; the lock keeps two arms from installing together
  lock=""; command -v flock >/dev/null && lock="flock /tmp/site.lock"
  $lock bash -c '[ -d /tmp/site/deepspeed ] || python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | grep -v "^WARNING" || true'
fi
export PYTHONPATH=/tmp/site:$code
exec 9>"$run/.unpack.lock"                   # two commands of one run unpack the carry one after the other
command -v flock >/dev/null && flock 9
for t in out/carry/*.tar.xz; do
  [ -f "$t" ] || continue
  stage=$(basename "$t" .tar.xz)
  [ -f "$run/$stage/done.json" ] || (cd "$run" && python3 -m tarfile -e "$root/$t" .) || exit 1
done
exec 9>&-
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
args=(mini --device "$device" --out "$run" --stages "$stages" $smoke "${sets[@]}")
[ -n "$models" ] && args+=(--models "$models")
timeout -s INT -k 60 "$limit" python3 -c "import sys; from vidforce.cli import main; sys.exit(main(sys.argv[1:]))" \
  "${args[@]}" 2>&1 | grep -v -e "it/s\]" -e "Warning" -e "return func" -e "ProcessGroupNCCL"
rc=${PIPESTATUS[0]}
echo "mini_lease.sh: vidforce mini exited with $rc"
for stage in ${fetch//,/ }; do
  for f in "$run/$stage"/model/*.safetensors; do cp "$f" "$out/$prefix$stage-$(basename "$f" | sed 's/^model-//')"; done
done
if [ -n "$models" ]; then
  for m in ${models//,/ }; do
    [ -f "$run/results/videos/$m.npz" ] && cp "$run/results/videos/$m.npz" "$out/${prefix}results-videos-$m.npz"
  done
  [ -d "$run/results/probes" ] && tar -cf "$out/${prefix}results-probes.tar" -C "$run/results" probes
fi
(cd "$run" && for d in */; do
   [ -f "$d/run/metrics.jsonl" ] && gzip -c "$d/run/metrics.jsonl" > "$d/metrics.jsonl.gz"
 done
 tar -cf "$out/${prefix}small$tag.tar" $(ls -d */done.json */model/*.json */metrics.jsonl.gz 2>/dev/null))
for f in "$out"/*; do                       # a file over the return limit comes back in parts
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt "$part" ]; then
    split -b "$part" -d -a 2 "$f" "$f.part-" && rm "$f"
  fi
done
ls -la "$out"
exit "$rc"
