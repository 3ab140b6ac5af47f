#!/bin/sh
# Regenerates the test certificates: a CA and leaf certificates for `localhost` (ECDSA
# P-256, RSA 2048, Ed25519), valid for 100 years so that tests do not age.
set -eu
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 36500 -subj /CN=ringwork-test-ca 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
for kind in ecdsa rsa ed25519; do
    case $kind in
        ecdsa) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $kind.key ;;
        rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $kind.key ;;
        ed25519) openssl genpkey -algorithm ED25519 -out $kind.key ;;
    esac
    openssl req -new -key $kind.key -out $kind.csr -subj /CN=localhost
    openssl x509 -req -in $kind.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
        -extfile ext.cnf -out $kind.pem 2>/dev/null
    rm $kind.csr
done
rm -f ext.cnf ca.srl ca.key
