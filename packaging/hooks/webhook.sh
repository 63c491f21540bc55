#!/bin/sh
# torch on_failure / on_recovery hook: POST the run's status as JSON (Slack-, Mattermost- or
# Alertmanager-style receivers take it with little glue).
#   on_failure:  [/usr/share/torch/hooks/webhook.sh, https://hooks.example.com/T0/B0/XYZ]
#   on_recovery: [/usr/share/torch/hooks/webhook.sh, https://hooks.example.com/T0/B0/XYZ]
set -eu
url=${1:?usage: webhook.sh URL}
# The last 1,000 bytes of output, JSON-escaped by python3 (present wherever torch is).
body=$(python3 - <<'PY'
import json, os
path = os.environ.get("TORCH_OUTPUT_FILE") or ""
tail = open(path, "rb").read()[-1000:].decode("utf-8", "replace") if path else ""
keys = ("TASK", "STATUS", "RUN_ID", "EXIT_CODE", "SIGNAL", "ATTEMPT", "SCHEDULED_AT", "STARTED_AT",
        "DURATION_S", "CONSECUTIVE_FAILURES", "HOST")
doc = {k.lower(): os.environ.get("TORCH_" + k, "") for k in keys}
doc["output_tail"] = tail
doc["text"] = f"torch: {doc['task']} on {doc['host']}: {doc['status']}"
print(json.dumps(doc))
PY
)
curl -fsS --max-time 20 -H 'Content-Type: application/json' --data-binary "$body" "$url" >/dev/null
