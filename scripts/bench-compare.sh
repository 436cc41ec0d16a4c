#!/usr/bin/env bash
# Compare two cws-gateway release binaries on one `bench` subcommand,
# interleaved in one session: before, after, before, after, … (PAIRS pairs),
# each process doing one run (`--runs 1`) from its own fresh scratch
# directory (no shared state: the bench puts its store in a temporary
# directory, and the built-in mappings are used because the scratch
# directory has no ./mappings). Figures are the medians over the runs of each
# binary; the load average is recorded at the start and end of every run.
#
#   scripts/bench-compare.sh BEFORE_BIN AFTER_BIN OUTDIR PAIRS BENCH [ARGS...]
#   scripts/bench-compare.sh /tmp/b/cws-gateway /tmp/a/cws-gateway /tmp/out 5 translate --seconds 2
#   scripts/bench-compare.sh /tmp/b/cws-gateway /tmp/a/cws-gateway /tmp/out 3 ingest --messages 10000
#   scripts/bench-compare.sh /tmp/b/cws-gateway /tmp/a/cws-gateway /tmp/out 5 api --patients 200 --requests 2000
#
# Writes OUTDIR/BENCH-runs.jsonl (one line per process: binary, pair, UTC
# time, load, and every JSON line the bench printed) and prints a table of
# medians and after/before ratios (needs jq). PAIRS=0 runs nothing and only
# prints the table of an existing OUTDIR/BENCH-runs.jsonl (e.g. the lines of
# two sessions concatenated).
set -euo pipefail

if [ $# -lt 5 ]; then
    sed -n '2,18p' "$0"
    exit 2
fi
before_bin=$(realpath "$1")
after_bin=$(realpath "$2")
outdir=$3
pairs=$4
bench=$5
shift 5
mkdir -p "$outdir"
runs="$outdir/$bench-runs.jsonl"
[ "$pairs" -gt 0 ] && : >"$runs"

load() { cut -d' ' -f1 /proc/loadavg; }

for pair in $(seq 1 "$pairs"); do
    for which in before after; do
        bin=$before_bin
        [ "$which" = after ] && bin=$after_bin
        scratch=$(mktemp -d /tmp/bench-compare.XXXXXX)
        start=$(date -u +%H:%M:%S)
        load0=$(load)
        (cd "$scratch" && "$bin" bench "$bench" --runs 1 "$@" >out.jsonl 2>err.log) || {
            echo "$which run $pair failed; stderr tail:" >&2
            tail -n 20 "$scratch/err.log" >&2
            exit 1
        }
        load1=$(load)
        jq -c -s --arg which "$which" --argjson pair "$pair" --arg start "$start" \
            --argjson load0 "$load0" --argjson load1 "$load1" \
            '{binary: $which, pair: $pair, start_utc: $start, load_start: $load0, load_end: $load1, lines: .}' \
            "$scratch/out.jsonl" >>"$runs"
        echo "$bench pair $pair $which: $start load $load0 -> $load1" >&2
        rm -rf "$scratch"
    done
done

# The summary line(s) of each process: translate and ingest print one with
# "summary": "median"; api prints one per phase with "median_of".
jq -r -s '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r2: . * 100 | round / 100;
  [ .[] | .binary as $b | .lines[]
    | select(.summary == "median" or .median_of != null)
    | (if .phase then .phase + " " else "" end) as $p
    | to_entries[]
    | select(.value | type == "number")
    | select(.key | IN("runs", "median_of", "connections", "requests", "patients",
                       "threads", "messages", "paced_rate", "pipelined_window") | not)
    | {binary: $b, figure: ($p + .key), value} ]
  | group_by(.figure)[]
  | . as $g
  | ([$g[] | select(.binary == "before") | .value]) as $bv
  | ([$g[] | select(.binary == "after") | .value]) as $av
  | select(($bv | length) > 0 and ($av | length) > 0)
  | ($bv | median) as $bm | ($av | median) as $am
  | [$g[0].figure, ($bm | r2), ($am | r2),
     (if $bm != 0 then ($am / $bm) * 100 | round / 100 else "-" end),
     "\($bv | length)+\($av | length)", ($bv | map(r2) | join("/")), ($av | map(r2) | join("/"))]
  | @tsv' "$runs" | column -t -s $'\t' -N "figure,before,after,ratio,runs,before_runs,after_runs"
jq -r -s 'group_by(.binary)[] | "load at start of each \(.[0].binary) run: " + (map("\(.start_utc) \(.load_start)") | join(", "))' "$runs"
