#!/usr/bin/env bash
# Install the Debian packages of the servers the service-backed tests start themselves (influxd,
# victoria-metrics, mosquitto), and the headless browser the report tests render report.html in
# (chromium, driven over its own DevTools pipe by pems/browser.py: no chromedriver). The servers are
# never run as system services: each test starts its own, bound to 127.0.0.1, in a temporary data
# directory. Without apt (or root) the tests skip with the reason. Browsers come from Debian only,
# never from a test tool's download.
set -u
need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: ${need[*]} not installed, their tests will skip"; exit 0; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  sudo -n true 2>/dev/null || { echo "not root: ${need[*]} not installed, their tests will skip"; exit 0; }
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing ${need[*]} (Debian packages, for the service-backed and browser tests)"
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
  || echo "could not install ${need[*]}: their tests will skip"
exit 0
