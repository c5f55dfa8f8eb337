#!/usr/bin/env bash
# flash.sh: put a gateway's bundle (python -m midshift.host_tools bundle) onto its target.
#
#   flash.sh --bundle DIR --target PATH [--require-mount] [--owner UID:GID] [--dry-run]
#   flash.sh --bundle DIR --target ssh://USER@HOST[:PORT] [--sudo] [--dry-run]
#   flash.sh --bundle DIR --target mpy:PORT [--romfs] [--dry-run]
#            (MicroPython: midshift/host_tools/mpy_flash.py; --romfs: the compiled modules into the
#            board's ROM partition, run in place from flash)
#
# PATH is the root of the card's file system: a mounted SD card, an image mounted with
# losetup, or any directory. The bundle's manifest is verified first (every file's
# SHA-256, no file added or missing); nothing is written if it does not verify.
# Only files whose content, mode or owner differ are written (each atomically: a copy
# beside the file, then a rename), so a second run changes nothing and says so.
# Key files (*.key) are always written 0600 and their directory 0700.
#
# ssh: files go over rsync (--checksum, so unchanged files are not sent) or scp when
# rsync is missing, then `systemctl daemon-reload` and `systemctl enable --now midshift`,
# plus a restart when rsync changed something (always after scp, which cannot tell); a
# bundle with wheels runs its /opt/midshift/install.sh instead (user, venv, keys, unit).
# Root is needed there: ssh://root@HOST, or --sudo for a user with passwordless sudo
# (rsync runs as `sudo -n rsync`; scp stages in ~/midshift-flash, then `sudo -n cp`).
# Any other user without --sudo is refused before anything is sent.
# --dry-run prints those commands only: it does not connect.
#
# --site-dir DIR appends what was done to that site's audit log.
# Refuses: target "/" (or a path resolving to it), a missing target, a target that is not a
# mount point with --require-mount, a bundle whose manifest does not verify.
# Exit status: 0 done (or nothing to do), 2 refused or bad arguments, 1 a copy failed.
set -euo pipefail

prog=flash.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "$prog: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

bundle="" target="" dry_run=0 require_mount=0 owner="" site_dir="" sudo=0 romfs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle=${2:-}; shift 2 || die "--bundle needs a directory" ;;
    --target) target=${2:-}; shift 2 || die "--target needs PATH, ssh://USER@HOST or mpy:PORT" ;;
    --owner) owner=${2:-}; shift 2 || die "--owner needs UID:GID" ;;
    --site-dir) site_dir=${2:-}; shift 2 || die "--site-dir needs a directory" ;;
    --dry-run) dry_run=1; shift ;;
    --sudo) sudo=1; shift ;;
    --romfs) romfs=1; shift ;;
    --require-mount) require_mount=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$bundle" ] || die "--bundle DIR is required (python -m midshift.host_tools bundle GW ... -o DIR)"
[ -n "$target" ] || die "--target is required: PATH, ssh://USER@HOST[:PORT] or mpy:PORT"

audit() {  # action subject detail: one line in the site's audit log, when asked for
  [ -n "$site_dir" ] || return 0
  local py="$here/.venv/bin/python"; [ -x "$py" ] || py=python3
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" -m midshift.host_tools audit --site-dir "$site_dir" \
    record --action "$1" --subject "$2" --detail "$3" >/dev/null
}

case "$target" in
  mpy:*)  # a MicroPython node: its bundle and its flashing (mpremote) are its own tool's
    port=${target#mpy:}
    [ -n "$port" ] || die "--target mpy:PORT needs a serial port (mpy:/dev/ttyACM0)"
    if [ -f "$here/midshift/host_tools/mpy_flash.py" ]; then
      py="$here/.venv/bin/python"; [ -x "$py" ] || py=python3
      extra=(); [ "$dry_run" = 1 ] && extra=(--dry-run)
      [ "$romfs" = 1 ] && extra+=(--romfs)
      echo "MicroPython target: handing over to python -m midshift.host_tools.mpy_flash" >&2
      set +e
      PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" -m midshift.host_tools.mpy_flash \
        --bundle "$bundle" --port "$port" "${extra[@]}"
      rc=$?
      set -e
      [ "$rc" != 0 ] || [ "$dry_run" = 1 ] || audit flash "$bundle" "mpy:$port" 2>/dev/null || true
      exit "$rc"
    fi
    die "MicroPython targets need midshift/host_tools/mpy_flash.py, which is not in this build (bundles for them come from midshift/host_tools/mpy_bundle.py)"
    ;;
esac
[ "$romfs" = 0 ] || die "--romfs applies to mpy:PORT targets only"

# ---- the bundle must verify before anything else happens ------------------------------
[ -d "$bundle" ] || die "--bundle $bundle: no such directory"
bundle=$(cd "$bundle" && pwd)
[ -f "$bundle/SHA256SUMS" ] && [ -f "$bundle/manifest.json" ] && [ -d "$bundle/root" ] \
  || die "--bundle $bundle: not a bundle (needs manifest.json, SHA256SUMS and root/)"
if ! bad=$(cd "$bundle" && sha256sum --strict --quiet -c SHA256SUMS 2>&1); then
  die "--bundle $bundle: manifest does not verify, refusing to flash: $(echo "$bad" | head -n 3 | tr '\n' ';')"
fi
listed=$(cd "$bundle" && awk '{print $2}' SHA256SUMS | grep '^root/' | sort)
present=$(cd "$bundle" && find root -type f | sort)
if [ "$listed" != "$present" ]; then
  extra=$(comm -13 <(echo "$listed") <(echo "$present") | head -n 3 | tr '\n' ' ')
  die "--bundle $bundle: files not in the manifest: ${extra:-?}; refusing to flash"
fi
gateway=$(sed -n 's/^ *"gateway": "\(.*\)",*$/\1/p' "$bundle/manifest.json" | head -n 1)


# ---- ssh ------------------------------------------------------------------------------
if [[ "$target" == ssh://* ]]; then
  hostpart=${target#ssh://}
  [[ "$hostpart" =~ ^[A-Za-z0-9._-]+@[A-Za-z0-9._:-]+$ ]] || die "--target $target: expected ssh://USER@HOST[:PORT]"
  port=22
  if [[ "$hostpart" =~ ^(.*):([0-9]+)$ ]]; then hostpart=${BASH_REMATCH[1]}; port=${BASH_REMATCH[2]}; fi
  # Writing / and running systemctl need root there: root@HOST, or USER through sudo.
  if [ "${hostpart%%@*}" != root ] && [ "$sudo" = 0 ]; then
    die "--target $target: flashing writes / and runs systemctl on the gateway, which needs root: use ssh://root@HOST, or --sudo (USER needs passwordless sudo there)"
  fi
  su=""; [ "$sudo" = 1 ] && su="sudo -n "
  stage=""
  if command -v rsync >/dev/null 2>&1; then
    copy=(rsync -rlp --checksum --itemize-changes -e "ssh -p $port")
    [ "$sudo" = 0 ] || copy+=(--rsync-path "sudo -n rsync")
    copy+=("$bundle/root/" "$hostpart:/")
  elif [ "$sudo" = 1 ]; then  # scp writes as USER: into USER's home first, then sudo cp
    stage=midshift-flash
    copy=(scp -P "$port" -p -r "$bundle/root/." "$hostpart:$stage/")
  else
    copy=(scp -P "$port" -p -r "$bundle/root/." "$hostpart:/")
  fi
  if [ -f "$bundle/root/opt/midshift/install.sh" ]; then
    # A bundle with wheels: install.sh makes the user and the venv, gives the keys to the
    # service, checks the config as the service's user, enables and (re)starts it.
    remote_changed="/opt/midshift/install.sh"
    remote_same="systemctl enable --now midshift"
  else
    # Keys readable by the service's user only; daemon-reload picks up a changed unit;
    # enable --now starts a stopped service; a restart only when files changed.
    remote_same='chmod 700 /etc/midshift/keys && chmod 600 /etc/midshift/keys/*.key && if id midshift >/dev/null 2>&1; then chown -R midshift:midshift /etc/midshift/keys; fi && systemctl daemon-reload && systemctl enable --now midshift'
    remote_changed="$remote_same && systemctl restart midshift"
  fi
  if [ -n "$stage" ]; then
    unstage="cp -r --preserve=mode,timestamps $stage/. / && rm -rf $stage && "
    remote_same="$unstage$remote_same" remote_changed="$unstage$remote_changed"
  fi
  # The remote commands hold no quote, $ or backslash: safe inside double quotes.
  as_root() { if [ "$sudo" = 1 ]; then echo "sudo -n sh -c \"$1\""; else echo "$1"; fi; }
  show() {  # a command as one copy-pastable line
    local a out=""
    for a in "$@"; do
      if [[ "$a" =~ ^[A-Za-z0-9@%+=:,./_-]+$ ]]; then out+=" $a"
      elif [[ "$a" != *"'"* ]]; then out+=" '$a'"
      else out+=" $(printf '%q' "$a")"; fi
    done
    echo " $out"
  }
  if [ "$dry_run" = 1 ]; then
    echo "dry run: bundle for ${gateway:-?} verified; would run (nothing is sent now):"
    [ "$sudo" = 0 ] || show ssh -p "$port" "$hostpart" "sudo -n true"
    [ -z "$stage" ] || show ssh -p "$port" "$hostpart" "rm -rf $stage && mkdir -m 700 $stage"
    show "${copy[@]}"
    if [ "${copy[0]}" = rsync ]; then
      show ssh -p "$port" "$hostpart" "$(as_root "$remote_changed")  # if files changed, else: $(as_root "$remote_same")"
    else
      show ssh -p "$port" "$hostpart" "$(as_root "$remote_changed")"
    fi
    exit 0
  fi
  if [ "$sudo" = 1 ] && ! ssh -p "$port" "$hostpart" "sudo -n true" </dev/null; then
    echo "$prog: ${hostpart%%@*} on ${hostpart#*@} cannot sudo without a password (sudo -n true failed): flash.sh runs unattended; add a NOPASSWD sudo rule for it or use ssh://root@HOST" >&2
    exit 1
  fi
  if [ -n "$stage" ]; then
    ssh -p "$port" "$hostpart" "rm -rf $stage && mkdir -m 700 $stage" </dev/null \
      || { echo "$prog: cannot make ~/$stage on $hostpart" >&2; exit 1; }
  fi
  echo "copying bundle for ${gateway:-?} to $hostpart (port $port) with ${copy[0]}${su:+ and sudo}"
  sent=$("${copy[@]}") || { echo "$prog: copy to $hostpart failed" >&2; exit 1; }
  # rsync itemizes what it changed (nothing: no output); scp cannot tell, so assume change.
  remote=$remote_same
  if [ "${copy[0]}" = scp ] || [ -n "$sent" ]; then
    [ -z "$sent" ] || echo "$sent"
    remote=$remote_changed
  fi
  ssh -p "$port" "$hostpart" "$(as_root "$remote")" </dev/null \
    || { echo "$prog: installing or enabling midshift on $hostpart failed (see above)" >&2; exit 1; }
  audit flash "${gateway:-?}" "ssh://$hostpart:$port"
  echo "flashed ${gateway:-?} to $hostpart; midshift enabled${sent:+ and restarted}"
  exit 0
fi

# ---- a directory ----------------------------------------------------------------------
[ -d "$target" ] || die "--target $target: no such directory (mount the card first)"
real=$(cd "$target" && pwd -P)
[ "$real" != "/" ] || die "--target $target is the root of this machine: refusing"
case "$real/" in "$bundle"/*) die "--target $target is inside the bundle: refusing" ;; esac
if [ "$require_mount" = 1 ] && ! mountpoint -q "$real"; then
  die "--target $target is not a mount point (--require-mount): is the card mounted?"
fi
if [ -n "$owner" ] && ! [[ "$owner" =~ ^[0-9]+:[0-9]+$ ]]; then
  die "--owner $owner: expected numeric UID:GID (the card's users, not this machine's)"
fi

changed=0 same=0
while IFS= read -r rel; do
  src="$bundle/$rel"; dst="$real/${rel#root/}"
  mode=$(stat -c %a "$src")
  case "$dst" in *.key) mode=600 ;; esac
  why=""
  if [ ! -e "$dst" ]; then why="new"
  elif ! cmp -s "$src" "$dst"; then why="content differs"
  elif [ "$(stat -c %a "$dst")" != "$mode" ]; then why="mode $(stat -c %a "$dst") -> $mode"
  elif [ -n "$owner" ] && [ "$(stat -c %u:%g "$dst")" != "$owner" ]; then why="owner"
  fi
  if [ -z "$why" ]; then same=$((same + 1)); continue; fi
  changed=$((changed + 1))
  if [ "$dry_run" = 1 ]; then echo "would write ${rel#root/} ($why)"; continue; fi
  # A directory on the card that is a symlink (absolute ones point into *this* machine)
  # must not carry a write outside the target: resolve the deepest existing ancestor.
  up=$(dirname "$dst")
  while [ ! -d "$up" ]; do up=$(dirname "$up"); done
  case "$(cd "$up" && pwd -P)/" in
    "$real"/*) ;;
    *) die "${rel#root/}: $(dirname "${rel#root/}") resolves outside $real (a symlink on the target): refusing" ;;
  esac
  mkdir -p "$(dirname "$dst")"
  tmp="$dst.flash-tmp.$$"
  (umask 077 && cp "$src" "$tmp") || { rm -f "$tmp"; echo "$prog: cannot write $dst" >&2; exit 1; }
  chmod "$mode" "$tmp"
  [ -z "$owner" ] || chown "$owner" "$tmp"
  mv -f "$tmp" "$dst"
  echo "wrote ${rel#root/} ($why)"
done < <(cd "$bundle" && find root -type f | sort)

keys="$real/etc/midshift/keys"
if [ "$dry_run" = 0 ] && [ -d "$keys" ]; then
  chmod 700 "$keys"
  [ -z "$owner" ] || chown "$owner" "$keys"
  sync -f "$real" 2>/dev/null || sync  # the card may be pulled right after
fi
if [ "$dry_run" = 1 ]; then
  echo "dry run: $changed file(s) would change, $same unchanged in $real; nothing written"
  exit 0
fi
if [ "$changed" -gt 0 ]; then audit flash "${gateway:-?}" "$real ($changed files)"; fi
echo "flashed ${gateway:-?} to $real: $changed file(s) changed, $same unchanged"
