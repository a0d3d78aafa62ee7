#!/usr/bin/env bash
# The README's two commands on N fresh clones of this repository's HEAD, one after another, each
# with its own empty HOME (no pip, model or Hugging Face caches carried over): the demo command
# until the app answers HTTP 200 on 127.0.0.1:7860, then the test command. Prints one line per
# step with its wall time; exits non-zero if any step failed.
#   bash scripts/fresh_clones.sh [N=3] [WORKDIR=/tmp/corea-fresh]
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "$REPO/../shared" 2>/dev/null && pwd || true)
N=${1:-3}; WORK=${2:-/tmp/corea-fresh}; failed=0
mkdir -p "$WORK"
for i in $(seq 1 "$N"); do
  D=$WORK/clone$i; rm -rf "$D"; mkdir -p "$D/home"
  git clone -q "file://$REPO" "$D/main"
  [ -n "$SHARED" ] && ln -s "$SHARED" "$D/shared"
  (
    cd "$D/main"
    export HOME=$D/home XDG_CACHE_HOME=$D/home/.cache PIP_CACHE_DIR=$D/home/.cache/pip
    echo "clone $i: $(git log --oneline -1 | cut -c1-60)"
    start=$(date +%s)
    ( bash scripts/install.sh && .venv/bin/python app.py ) > "$D/demo.log" 2>&1 &
    demo=$!; served=no
    for _ in $(seq 1 900); do
      if curl -fs -o /dev/null http://127.0.0.1:7860/; then served=yes; break; fi
      kill -0 $demo 2>/dev/null || break
      sleep 2
    done
    echo "clone $i demo command: app served: $served after $(( $(date +%s) - start )) s"
    pkill -f "$D/main/.venv/bin/python app.py"; wait $demo 2>/dev/null
    start=$(date +%s)
    bash scripts/install.sh --dev > "$D/tests.log" 2>&1 \
      && .venv/bin/python -m pytest -m "not slow" -q -p no:cacheprovider >> "$D/tests.log" 2>&1
    rc=$?
    echo "clone $i test command: exit $rc after $(( $(date +%s) - start )) s:" \
         "$(grep -E '[0-9]+ (passed|failed)' "$D/tests.log" | tail -1)"
    [ "$served" = yes ] && [ $rc -eq 0 ]
  ) || failed=1
done
exit $failed
