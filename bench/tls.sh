# A test CA and a server certificate for the TLS cases of compare.sh and idle.sh, made at run
# time with the openssl CLI (Debian: openssl). Sourced; defines one function.
# shellcheck shell=bash

# make_test_certs DIR [rsa|ec]: writes DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key:
# a CA, and a server certificate it signed for DNS:localhost and IP:127.0.0.1 (valid 2 days).
# rsa (default): RSA 2048, as the README's example; ec: ECDSA P-256. The key type sets what a
# full handshake costs the broker (it signs once per handshake).
make_test_certs() {
    local dir="$1" kind="${2:-rsa}" newkey
    case "$kind" in
        rsa) newkey=(-newkey rsa:2048) ;;
        ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
        *) echo "make_test_certs: key type rsa or ec, not $kind" >&2; return 2 ;;
    esac
    command -v openssl >/dev/null || { echo "make_test_certs: needs openssl" >&2; return 1; }
    mkdir -p "$dir"
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=ringmq bench CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
    # mosquitto started as root drops to its own user, which must read these (and reach DIR:
    # callers make its parent, a mktemp -d folder, 0755 too).
    chmod 755 "$dir"
    chmod 644 "$dir"/*.pem "$dir/server.key"
}
