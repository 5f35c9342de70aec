#!/usr/bin/env bash
# Regenerates the pre-signed test zones (ldnsutils): signed.example with
# NSEC, nsec3.example with NSEC3 (salt, 1 iteration), signatures valid
# to 2035. The keys are throwaway; only the signed zone files are kept.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for zone in signed.example nsec3.example; do
  sed "s/signed\.example\./$zone./" signed.example.zone.in >"$tmp/$zone"
  (cd "$tmp" && ldns-keygen -a ECDSAP256SHA256 -k "$zone" >ksk && ldns-keygen -a ECDSAP256SHA256 "$zone" >zsk)
  args=(-i 20240101000000 -e 20350101000000 -o "$zone" -f "$zone.signed.zone")
  [ "$zone" = nsec3.example ] && args+=(-n -s abcdef -t 1)
  ldns-signzone "${args[@]}" "$tmp/$zone" "$tmp/$(cat "$tmp/ksk")" "$tmp/$(cat "$tmp/zsk")"
  rm -f "$tmp"/K*
done
