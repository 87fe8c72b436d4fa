#!/usr/bin/env bash
# Crash safety, full form (issue 3): `argus serve` under a remote-write load is killed
# with SIGKILL at 20 random moments and restarted on the same data directory; every
# acknowledged batch must be there exactly once at the end. The same test runs in CI
# with 3 kills (coordinator/tests/serve_crash.rs); this runs it in release mode.
#
#   scripts/crash-soak.sh                      # 20 kills, a fresh seed
#   ARGUS_CRASH_SEED=123 scripts/crash-soak.sh # replay a seed's kill moments
#   ARGUS_CRASH_ROUNDS=50 scripts/crash-soak.sh
#
# Prints the seed, each round's replay time (start to /ready) and Raft log size, and
# the totals; the full output is kept in the file named at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export ARGUS_CRASH_ROUNDS="${ARGUS_CRASH_ROUNDS:-20}"
log="$(mktemp -t argus-crash-soak.XXXXXX.log)"
summary='^(crash test|round|read back)'

if cargo test --release --locked -p argus-coordinator --test serve_crash -- --nocapture >"$log" 2>&1; then
  grep -E "$summary" "$log"
  echo "crash soak: PASSED ($ARGUS_CRASH_ROUNDS kills); full output in $log"
else
  grep -E "$summary" "$log" || true
  echo "--- last lines of the output ---"
  tail -n 60 "$log"
  echo "crash soak: FAILED; full output in $log"
  exit 1
fi
