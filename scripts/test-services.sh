#!/usr/bin/env bash
# Start what the test suite needs when it is not already answering: PostgreSQL, Redis,
# and the Debian packages used by tests (chromium for Playwright; swaks and s-nail as real SMTP
# clients, s-nail, mbsync (isync) and fetchmail as real IMAP clients; openssl's s_client to check the dev
# certificate).
set -euo pipefail

have_port() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

if ! have_port 5432; then
  echo "test-services: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! have_port 6379; then
  echo "test-services: starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v s-nail >/dev/null 2>&1 || missing+=(s-nail)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
command -v fetchmail >/dev/null 2>&1 || missing+=(fetchmail)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-services: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # xdist workers may get here together: wait for each other's dpkg lock instead of failing
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

for _ in $(seq 1 50); do
  have_port 5432 && have_port 6379 && exit 0
  sleep 0.2
done
echo "test-services: PostgreSQL or Redis did not come up on 127.0.0.1:5432/6379" >&2
exit 1
