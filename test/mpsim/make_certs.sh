#!/bin/sh
# Create a throw-away test CA and a server certificate for 127.0.0.1/localhost.
#   test/mpsim/make_certs.sh OUTDIR
# Writes OUTDIR/ca.pem, ca.key, server.pem, server.key (RSA 2048, valid 825 days).
# libcurl verifies the server with CURLOPT_CAINFO=OUTDIR/ca.pem.
set -eu
out=${1:?usage: make_certs.sh OUTDIR}
mkdir -p "$out"
cd "$out"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
    -keyout ca.key -out ca.pem -subj "/CN=mpsim test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
    -subj "/CN=127.0.0.1" 2>/dev/null
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 825 -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
# Test-only keys: the server key is readable so that the simulator can run as
# another user than the one who made it.
chmod 644 ca.pem server.pem server.key
