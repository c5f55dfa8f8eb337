#!/usr/bin/env bash
# install.sh: install the midshift agent on this gateway from its flashed bundle, offline.
#
#   /opt/midshift/install.sh [--root DIR] [--python PY] [--no-start]
#
# Run as root on the gateway once flash.sh has put the bundle's files in place (flash.sh
# --target ssh://... runs it). Nothing is fetched from a network:
#  1. the system user midshift (groups midshift, dialout, gpio) from
#     /usr/lib/sysusers.d/midshift.conf by systemd-sysusers, or useradd where it is absent;
#  2. /opt/midshift/.venv made afresh by PY (default /usr/bin/python3, the OS's: the
#     service's user must be able to read it) with midshift and its
#     dependencies from /opt/midshift/wheels only (pip --no-index);
#  3. the keys for the service and no one else: /etc/midshift/keys root:midshift 0750,
#     *.key and *.token root:midshift 0640, certificates 0644;
#  4. `python -m midshift.firmware check --offline` of /etc/midshift/site.toml as user midshift (the
#     unit's interpreter, the service's rights: a key it cannot read fails here, not at 3 a.m.);
#  5. systemctl daemon-reload, enable and (re)start midshift; not with --no-start, and with
#     --root only `systemctl --root DIR enable`.
#
# --root DIR installs into a tree at DIR instead of / (tests; an image prepared on a host of
# the gateway's architecture and Python). A second run gives the same result.
# Exit status: 0 installed, 2 bad arguments or a bundle that does not fit this machine,
# 1 a step failed (its output says which).
set -euo pipefail

prog=install.sh
die() { echo "$prog: $*" >&2; exit 2; }
fail() { echo "$prog: $*" >&2; exit 1; }

root=/ python=/usr/bin/python3 start=1
# This machine's Python settings are not the agent's.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:-}; shift 2 || die "--root needs a directory" ;;
    --python) python=${2:-}; shift 2 || die "--python needs an interpreter" ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "needs root (it creates a user and writes /opt and /etc): run it with sudo"
[ -d "$root" ] || die "--root $root: no such directory"
root=$(cd "$root" && pwd -P)
r=${root%/}  # prefix for paths: "" for /
opt=$r/opt/midshift etc=$r/etc/midshift
[ -d "$opt/wheels" ] || die "$opt/wheels: missing: flash a bundle built with --wheels first"
[ -f "$etc/site.toml" ] || die "$etc/site.toml: missing: flash the gateway's bundle first"
command -v "$python" >/dev/null || die "--python $python: not found (Raspberry Pi OS: apt install python3-venv)"

# ---- the bundle's wheels must fit this interpreter ---------------------------------------
read -r want_py want_arch < <("$python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["python"], d["arch"])' "$opt/wheels/wheelhouse.json") \
  || die "$opt/wheels/wheelhouse.json: missing or unreadable"
read -r have_py have_arch < <("$python" -c 'import platform,sys; print("%d.%d" % sys.version_info[:2], platform.machine())')
# A 32-bit Raspberry Pi OS on a 64-bit kernel: python3 says armv7l although uname says aarch64.
if [ "$have_py" != "$want_py" ] || [ "$have_arch" != "$want_arch" ]; then
  die "this gateway's $python is Python $have_py on $have_arch; the bundle's wheels are for Python $want_py on $want_arch: build the wheelhouse with --arch $have_arch --python $have_py"
fi

# ---- 1. the service's user ---------------------------------------------------------------
sysusers=${MIDSHIFT_SYSUSERS-$(command -v systemd-sysusers || true)}
conf=$r/usr/lib/sysusers.d/midshift.conf
[ -f "$conf" ] || die "$conf: missing: flash the gateway's bundle first"
if [ -n "$sysusers" ]; then
  "$sysusers" --root="$root" "$conf" || fail "systemd-sysusers $conf failed"
else
  echo "$prog: no systemd-sysusers: creating the user with useradd"
  for g in dialout gpio; do groupadd --root "$root" --system -f "$g"; done
  if ! grep -q '^midshift:' "$r/etc/passwd" 2>/dev/null; then
    useradd --root "$root" --system --user-group --home-dir /var/lib/midshift --no-create-home \
      --shell /usr/sbin/nologin --comment "midshift store-and-forward agent" midshift \
      || fail "useradd midshift failed"
  fi
  usermod --root "$root" -a -G dialout,gpio midshift || fail "usermod midshift failed"
fi
# Numbers from the tree's own files: under --root, this machine's names may differ.
uid=$(awk -F: '$1 == "midshift" {print $3}' "$r/etc/passwd")
gid=$(awk -F: '$1 == "midshift" {print $3}' "$r/etc/group")
[ -n "$uid" ] && [ -n "$gid" ] || fail "user or group midshift missing from $r/etc after step 1"

# ---- 2. the virtual environment, from the bundle's wheels only ---------------------------
"$python" -m venv --clear "$opt/.venv" || fail "$python -m venv failed (Raspberry Pi OS: apt install python3-venv)"
# Only the bundle's wheels: no index, and no pip.conf or PIP_* settings of this machine.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  "$opt/.venv/bin/python" -m pip install -q --no-index --no-cache-dir --disable-pip-version-check \
  --find-links "$opt/wheels" "midshift[pi]" || fail "pip install from $opt/wheels failed"
# The agent is the wheel's now: a source tree left by an older bundle would shadow it.
rm -rf "$opt/midshift" "$opt/firmware"  # (the second: bundles before the package was named midshift)

# ---- 3. keys readable by the service only ------------------------------------------------
keys=$etc/keys
if [ -d "$keys" ]; then
  chown "0:$gid" "$keys" && chmod 0750 "$keys"
  find "$keys" -maxdepth 1 -type f \( -name '*.key' -o -name '*.token' -o -name '*.json' \) \
    -exec chown "0:$gid" {} + -exec chmod 0640 {} +
  find "$keys" -maxdepth 1 -type f \( -name '*.crt' -o -name '*.pem' \) -exec chmod 0644 {} +
fi

# ---- 4. the installed agent reads its config as the service would ------------------------
if ! out=$(cd "$opt" && setpriv --reuid "$uid" --regid "$gid" --clear-groups \
    "$opt/.venv/bin/python" -m midshift.firmware check --offline --config "$etc/site.toml" 2>&1); then
  fail "the installed agent does not accept $etc/site.toml as user midshift: $out"
fi
echo "$out" | head -n 1

# ---- 5. the unit -------------------------------------------------------------------------
if [ "$root" != / ]; then
  if command -v systemctl >/dev/null; then systemctl --root="$root" enable midshift >/dev/null 2>&1 || true; fi
  echo "installed midshift $("$opt/.venv/bin/python" -m midshift.firmware --version | cut -d' ' -f2) into $root (not started: --root)"
  exit 0
fi
systemctl daemon-reload || fail "systemctl daemon-reload failed"
systemctl enable midshift || fail "systemctl enable midshift failed"
if [ "$start" = 1 ]; then
  systemctl restart midshift || fail "systemctl restart midshift failed: journalctl -u midshift -n 50"
  echo "midshift $(systemctl is-active midshift)"
fi
