# Sourced by scripts/demo and scripts/scale-out: example files to ship, so a fresh machine
# shows something.
mkdir -p examples/logs/worker
[ -s examples/logs/app.log ] || for i in $(seq 1 1000); do
  echo "$(date -u +%FT%TZ) INFO request id=$i path=/api/items/$((i % 17)) status=200 took_ms=$((i % 91))"
done > examples/logs/app.log
[ -s examples/logs/worker/jobs.log ] || for i in $(seq 1 200); do
  echo "$(date -u +%FT%TZ) WARN job=$i retry=$((i % 3))"
done > examples/logs/worker/jobs.log
