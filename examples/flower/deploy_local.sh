#!/usr/bin/env bash
# splitvit on a Flower deployment on this machine (docs: "Flower", the deployment recipe): a SuperLink and two
# SuperNodes with TLS and SuperNode authentication, then flwr run. Everything lives in WORK_DIR (default: a
# fresh temporary folder); the run's files end in WORK_DIR/outputs/flower. Needs pip install -e '.[flower]',
# openssl and ssh-keygen.
#   examples/flower/deploy_local.sh [WORK_DIR] [--run-config 'key=value ...']
set -euo pipefail
for cmd in flwr flower-superlink flower-supernode openssl ssh-keygen; do
  command -v "$cmd" > /dev/null || { echo "deploy_local.sh: '$cmd' not found; install the extra (pip install -e '.[flower]')," \
    "activate its environment (source .venv/bin/activate), and install openssl and ssh-keygen" >&2; exit 127; }
done
app=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d)}; shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$work/certificates" "$work/keys" "$work/flwr_home"
cd "$work"
export FLWR_HOME=$work/flwr_home  # the flwr CLI's connections, apart from your own ~/.flwr
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# 1. TLS: a CA, and a certificate for 127.0.0.1 that the SuperLink and splitvit's link server both present
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=splitvit-flower-ca" \
  -keyout certificates/ca.key -out certificates/ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout certificates/server.key \
  -out certificates/server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > certificates/san.ext
openssl x509 -req -in certificates/server.csr -CA certificates/ca.crt -CAkey certificates/ca.key -CAcreateserial \
  -days 2 -extfile certificates/san.ext -out certificates/server.pem 2>/dev/null
openssl rand -hex 16 > certificates/token && chmod 600 certificates/token  # splitvit's link token

# 2. SuperNode authentication: one EC key pair per SuperNode
for i in 1 2; do ssh-keygen -q -t ecdsa -b 384 -N "" -f "keys/supernode_$i"; done

# 3. the SuperLink (its APIs over HTTPS on 127.0.0.1:8000), with TLS and only registered SuperNodes allowed
flower-superlink --ssl-ca-certfile certificates/ca.crt --ssl-certfile certificates/server.pem \
  --ssl-keyfile certificates/server.key --enable-supernode-auth --disable-runtime-dependency-installation \
  > superlink.log 2>&1 &
pids+=($!)
cat > flwr_home/config.toml <<TOML
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:8000"
root-certificates = "$work/certificates/ca.crt"
TOML
for _ in $(seq 60); do flwr supernode list local-deployment > /dev/null 2>&1 && break; sleep 1; done

# 4. register both SuperNodes' public keys, then start them
for i in 1 2; do flwr supernode register "keys/supernode_$i.pub" local-deployment; done
for i in 1 2; do
  flower-supernode --superlink 127.0.0.1:8000 --root-certificates certificates/ca.crt \
    --auth-supernode-private-key "keys/supernode_$i" --port $((9093 + i)) \
    > "supernode_$i.log" 2>&1 &
  pids+=($!)
done

# 5. run the app: splitvit's overrides are its run config; the paths are this folder's
flwr run "$app" local-deployment --stream --run-config \
  "run_dir='$work/outputs/flower' link.tls.cert='$work/certificates/server.pem' \
   link.tls.key='$work/certificates/server.key' link.tls.ca='$work/certificates/ca.crt' \
   link.token_file='$work/certificates/token'" "$@"
test -f "$work/outputs/flower/summary.json"
echo "run files in $work/outputs/flower"
