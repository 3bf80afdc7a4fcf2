#!/usr/bin/env bash
# One node's share of a kfm job, run by srun (one task per node): the launcher command given (torchrun) with
# USR1 ignored, so that a stop request reaches the training processes themselves. torchrun's own USR1 handling
# raises a SignalException in its agent and prints tracebacks for what is a clean stop; here the workers (the
# launcher's children) get the signal, checkpoint, exit 0, and torchrun sees them end normally.
# Needs pkill (procps) on the node or in the container.
set -uo pipefail
( trap '' USR1; exec "$@" ) &
launcher=$!
trap 'pkill -USR1 -P "$launcher" || true' USR1
while kill -0 "$launcher" 2>/dev/null; do
    wait "$launcher"  # returns early (status > 128) when the trap runs
done
wait "$launcher"  # the launcher's own exit status (bash keeps it for an ended child)
