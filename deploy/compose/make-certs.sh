#!/bin/sh
# Makes the compose demo's throwaway PKI with the openssl CLI: a root, an intermediate, and one X509-SVID per
# workload. Usage: make-certs.sh OUTDIR   (writes OUTDIR/ca.crt and OUTDIR/<name>/{tls.crt,tls.key,ca.crt})
#
# Safe to run again: the CA is kept, and a leaf is re-issued only when it expires within the hour or when
# ROTATE=1 is set (which is how the demo shows a live rotation). CERT_OWNER=uid:gid chowns what it writes,
# so an unprivileged mtlsd (uid 10001 in the image) can read its key.
set -eu

out=${1:?usage: make-certs.sh OUTDIR}
trust_domain=${TRUST_DOMAIN:-example.org}
workloads=${WORKLOADS:-orders frontend}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Our own openssl config, so the system's openssl.cnf cannot add extensions behind our back.
cat >"$work/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[svid]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:\${ENV::SPIFFE_ID}
CNF
export SPIFFE_ID=unused

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }

if [ ! -s "$out/ca.crt" ] || [ ! -s "$out/intermediate.key" ]; then
  new_key "$out/root.key"
  openssl req -new -x509 -config "$work/openssl.cnf" -extensions root -sha256 -days 365 \
    -key "$out/root.key" -subj "/O=mtlsd demo/CN=$trust_domain root" -set_serial "$(serial)" -out "$out/ca.crt"
  new_key "$out/intermediate.key"
  openssl req -new -config "$work/openssl.cnf" -key "$out/intermediate.key" \
    -subj "/O=mtlsd demo/CN=$trust_domain intermediate" -out "$work/intermediate.csr"
  openssl x509 -req -sha256 -days 365 -in "$work/intermediate.csr" -CA "$out/ca.crt" -CAkey "$out/root.key" \
    -set_serial "$(serial)" -extfile "$work/openssl.cnf" -extensions intermediate -out "$out/intermediate.crt"
  echo "made a root and an intermediate CA for $trust_domain in $out"
fi

for name in $workloads; do
  dir="$out/$name"
  mkdir -p "$dir"
  if [ "${ROTATE:-0}" != 1 ] && [ -s "$dir/tls.crt" ] && openssl x509 -checkend 3600 -noout -in "$dir/tls.crt" >/dev/null; then
    continue
  fi
  SPIFFE_ID="spiffe://$trust_domain/ns/shop/sa/$name"
  export SPIFFE_ID
  new_key "$work/$name.key"
  openssl req -new -config "$work/openssl.cnf" -key "$work/$name.key" -subj "/O=mtlsd demo/CN=$name" \
    -out "$work/$name.csr"
  openssl x509 -req -sha256 -days 7 -in "$work/$name.csr" -CA "$out/intermediate.crt" \
    -CAkey "$out/intermediate.key" -set_serial "$(serial)" -extfile "$work/openssl.cnf" -extensions svid \
    -out "$work/$name.crt"
  cat "$work/$name.crt" "$out/intermediate.crt" >"$work/$name.chain"
  cp "$out/ca.crt" "$work/$name.ca"
  if [ -n "${CERT_OWNER:-}" ]; then chown "$CERT_OWNER" "$work/$name.key" "$work/$name.chain" "$work/$name.ca"; fi
  chmod 0600 "$work/$name.key"
  chmod 0644 "$work/$name.chain" "$work/$name.ca"
  # Each file lands with a rename, so a watching mtlsd never reads a half-written one. The key goes first:
  # until the certificate follows, mtlsd sees a mismatched pair, refuses it and keeps the old one.
  mv -f "$work/$name.key" "$dir/tls.key"
  mv -f "$work/$name.ca" "$dir/ca.crt"
  mv -f "$work/$name.chain" "$dir/tls.crt"
  echo "issued $SPIFFE_ID in $dir (valid 7 days)"
done
