#!/usr/bin/env bash
# Runs pytest and treats exit 5 ("no tests collected") as success only when asked to;
# otherwise an empty run is a failure, since CI must never pass on zero tests.
"$@"
rc=$?
if [ "$rc" -eq 5 ] && [ "${LOOPWISE_ALLOW_EMPTY:-0}" = "1" ]; then exit 0; fi
exit "$rc"
