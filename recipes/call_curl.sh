#!/usr/bin/env bash
# Call the running deployment with curl. Usage: bash recipes/call_curl.sh ["question"]
set -euo pipefail
status=$(dsagent status --json)
# one deployment prints an object, several a list: take the ready one
field() { python3 -c "import json,sys; d=json.load(sys.stdin); d=d if isinstance(d, dict) else next(x for x in d if x['state']=='ready'); print(d['$1'])" <<<"$status"; }
curl -s "$(field base_url)/chat/completions" \
  -H "Authorization: Bearer $(cat "$(field api_key_file)")" \
  -H "Content-Type: application/json" \
  -d "{\"model\": \"$(field served_model_name)\", \"messages\": [{\"role\": \"user\", \"content\": \"${1:-What is the capital of France?}\"}]}"
echo
