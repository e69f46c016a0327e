#!/usr/bin/env bash
# Call the running deployment with curl. Usage: bash recipes/call_curl.sh ["question"]
# TEMPERATURE=0 for a greedy answer (default: the server's own sampling). The key goes to curl on
# its standard input, never on its command line (where `ps` shows it to every user).
set -euo pipefail
status=$(dsagent status --json)
# one deployment prints an object, several a list: take the ready one
field() { python3 -c "import json,sys; d=json.load(sys.stdin); d=d if isinstance(d, dict) else next(x for x in d if x['state']=='ready'); print(d['$1'])" <<<"$status"; }
body=$(python3 -c 'import json, os, sys
b = {"model": sys.argv[1], "messages": [{"role": "user", "content": sys.argv[2]}]}
if os.environ.get("TEMPERATURE"):
    b["temperature"] = float(os.environ["TEMPERATURE"])
print(json.dumps(b))' "$(field served_model_name)" "${1:-What is the capital of France?}")
key_file=$(field api_key_file)
printf 'Authorization: Bearer %s\n' "$(<"$key_file")" | curl -s "$(field base_url)/chat/completions" \
  -H @- -H "Content-Type: application/json" -d "$body"
echo
