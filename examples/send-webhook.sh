#!/usr/bin/env bash
# Send examples/workflow_run.json to a local flowforged as GitHub would: signed with the webhook secret.
# Usage: examples/send-webhook.sh [URL] [SECRET] [FILE]
set -euo pipefail
url=${1:-http://127.0.0.1:8080/hooks/github}
secret=${2:-dev-github-secret}
file=${3:-$(dirname "$0")/workflow_run.json}
signature=$(openssl dgst -sha256 -hmac "$secret" < "$file" | sed 's/^.* //')
curl -sS -X POST "$url" \
  -H 'Content-Type: application/json' \
  -H 'X-GitHub-Event: workflow_run' \
  -H "X-GitHub-Delivery: $(cat /proc/sys/kernel/random/uuid)" \
  -H "X-Hub-Signature-256: sha256=$signature" \
  --data-binary "@$file"
echo
