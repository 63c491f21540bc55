#!/bin/sh
# torch on_failure / on_recovery hook: mail the run's status and output with sendmail.
#   on_failure:  [/usr/share/torch/hooks/mail.sh, ops@example.com]
#   on_recovery: [/usr/share/torch/hooks/mail.sh, ops@example.com]
# torch sets TORCH_TASK, TORCH_STATUS (failed, timeout, spawn_failed, lost, overdue, ok),
# TORCH_RUN_ID, TORCH_EXIT_CODE, TORCH_SIGNAL, TORCH_HOST, TORCH_OUTPUT_FILE, ...
set -eu
to=${1:?usage: mail.sh ADDRESS}
{
  printf 'To: %s\nSubject: [torch] %s on %s: %s\n\n' "$to" "$TORCH_TASK" "$TORCH_HOST" "$TORCH_STATUS"
  printf 'run %s (attempt %s), scheduled %s, started %s, %s s\n' "$TORCH_RUN_ID" "$TORCH_ATTEMPT" \
    "$TORCH_SCHEDULED_AT" "$TORCH_STARTED_AT" "$TORCH_DURATION_S"
  printf 'exit code %s, signal %s, failures in a row: %s\n\n' "${TORCH_EXIT_CODE:--}" "${TORCH_SIGNAL:--}" \
    "$TORCH_CONSECUTIVE_FAILURES"
  [ -n "${TORCH_OUTPUT_FILE:-}" ] && cat "$TORCH_OUTPUT_FILE"
} | "${SENDMAIL:-/usr/sbin/sendmail}" -t
