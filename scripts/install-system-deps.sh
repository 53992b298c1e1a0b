#!/usr/bin/env bash
# System packages sfu needs to build (libssl-dev for the engine's SRTP) and to run its whole test
# suite (Chromium, coturn, ffmpeg, iptables, conntrack, iproute2). Idempotent; needs root.
set -euo pipefail
packages=(build-essential libssl-dev iproute2 iptables conntrack coturn ffmpeg chromium gnutls-bin openssl janus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# coturn's package enables a system service on some setups: the tests start their own by PID.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now coturn >/dev/null 2>&1 || true; fi
