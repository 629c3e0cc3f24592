#!/bin/sh
# Provision the host for guest-harness (Debian, run as root): QEMU, busybox-static, nvme-cli and
# a Debian cloud kernel that is only downloaded and extracted (never installed).
#
#   GUEST_HARNESS_DIR   cache folder (default /var/cache/spdk-replication-guest)
#   GUEST_KERNEL_PKG    kernel package (default: what linux-image-cloud-amd64 depends on)
#
# Writes $GUEST_HARNESS_DIR/harness.env, which the Rust crate reads to find everything.
# Idempotent: when harness.env is complete and its files exist it returns at once, without apt.
# Never fails the caller's CI when apt is unusable: it says why and exits 0 (tests then skip).
set -eu
DIR=${GUEST_HARNESS_DIR:-/var/cache/spdk-replication-guest}
ENV=$DIR/harness.env
STAMP_VERSION=1
log() { echo "guest-harness provision: $*" >&2; }

# Quick path: everything recorded last time is still there.
if [ -r "$ENV" ]; then
    # shellcheck disable=SC1090
    . "$ENV"
    if [ "${STAMP:-}" = "$STAMP_VERSION" ] && [ -x "${QEMU:-/nonexistent}" ] && [ -x "${BUSYBOX:-/nonexistent}" ] \
        && [ -x "${NVME:-/nonexistent}" ] && [ -r "${KERNEL_DIR:-/nonexistent}/boot/vmlinuz-${KVER:-}" ] \
        && [ -r "$KERNEL_DIR/lib/modules/$KVER/modules.dep" ]; then
        log "already provisioned ($KVER, $QEMU)"
        exit 0
    fi
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "needs root and apt-get; skipping (guest tests will report what is missing)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$DIR/debs"

apt_updated=0
apt_update() {
    [ $apt_updated = 1 ] && return 0
    apt-get update -qq || { log "apt-get update failed"; return 1; }
    apt_updated=1
}
# install PKGS unless that would remove an installed package (e.g. qemu-utils from backports)
apt_install_safe() {
    if apt-get install -s --no-install-recommends "$@" 2>/dev/null | grep -q '^Remv '; then
        log "installing $* would remove packages:"
        apt-get install -s --no-install-recommends "$@" 2>/dev/null | grep '^Remv ' >&2
        return 1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing_pkgs() {  # prints the packages among $@ that are not installed
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"
    done
}

# 1. busybox-static (guest userland + host-side depmod), nvme-cli (+ libnvme1, copied into the guest)
need=$(missing_pkgs busybox-static nvme-cli)
if [ -n "$need" ]; then
    apt_update || exit 0
    # shellcheck disable=SC2086
    apt_install_safe $need || { log "could not install $need"; exit 0; }
fi

# 2. QEMU. A plain install of bookworm's qemu-system-x86 removes a newer qemu-utils (backports,
#    the dev box has one): then the QEMU packages are extracted privately into $DIR/qemu and
#    only their (non-QEMU) shared-library dependencies are installed.
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu"
QEMU=""
QEMU_DATADIR=""
if [ -x "$DIR/qemu/usr/bin/qemu-system-x86_64" ]; then
    QEMU=$DIR/qemu/usr/bin/qemu-system-x86_64
elif command -v qemu-system-x86_64 >/dev/null 2>&1; then
    QEMU=$(command -v qemu-system-x86_64)
else
    apt_update || exit 0
    # shellcheck disable=SC2086
    if apt_install_safe $QEMU_PKGS; then
        QEMU=$(command -v qemu-system-x86_64)
    else
        log "extracting QEMU privately into $DIR/qemu instead"
        libs=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                   --no-replaces --no-enhances qemu-system-x86 qemu-system-common \
               | awk '/^ *Depends: /{print $2}' | grep -v -E '^(qemu-|seabios|ipxe-qemu|<)' | sort -u)
        # shellcheck disable=SC2086
        need=$(missing_pkgs $libs)
        # shellcheck disable=SC2086
        if [ -n "$need" ]; then apt_install_safe $need || { log "could not install QEMU's libraries"; exit 0; }; fi
        rm -rf "$DIR/qemu.tmp" && mkdir -p "$DIR/qemu.tmp"
        # shellcheck disable=SC2086
        (cd "$DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root $QEMU_PKGS) || { log "apt-get download QEMU failed"; exit 0; }
        for p in $QEMU_PKGS; do
            deb=$(ls -t "$DIR/debs/${p}"_*.deb | head -1)
            dpkg -x "$deb" "$DIR/qemu.tmp"
        done
        # Debian's /usr/share/qemu links the firmware with absolute paths (/usr/share/seabios/...):
        # point them into the private tree.
        find "$DIR/qemu.tmp/usr/share/qemu" -type l | while read -r l; do
            t=$(readlink "$l")
            case "$t" in /*) ln -sfn "$DIR/qemu${t}" "$l" ;; esac
        done
        rm -rf "$DIR/qemu" && mv "$DIR/qemu.tmp" "$DIR/qemu"
        QEMU=$DIR/qemu/usr/bin/qemu-system-x86_64
    fi
fi
# A private QEMU looks for firmware (SeaBIOS, option ROMs) in its compiled-in /usr paths: pass
# the private copies of those folders (one -L each, ':'-separated here).
case "$QEMU" in
    "$DIR"/qemu/*) QEMU_DATADIR=$DIR/qemu/usr/share/qemu:$DIR/qemu/usr/share/seabios:$DIR/qemu/usr/lib/ipxe/qemu ;;
esac
"$QEMU" --version >/dev/null || { log "$QEMU does not run"; exit 0; }

# 3. guest kernel: download + extract only; modules.dep generated with busybox depmod
KPKG=${GUEST_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
    KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
    if [ -z "$KPKG" ]; then
        apt_update || exit 0
        KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    fi
fi
[ -n "$KPKG" ] || { log "no linux-image-cloud-amd64 in the apt sources"; exit 0; }
KVER=${KPKG#linux-image-}
KERNEL_DIR=$DIR/kernel/$KVER
if [ ! -r "$KERNEL_DIR/lib/modules/$KVER/modules.dep" ]; then
    if ! ls "$DIR/debs/${KPKG}"_*.deb >/dev/null 2>&1; then
        (cd "$DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG") \
            || { apt_update && (cd "$DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG"); } \
            || { log "apt-get download $KPKG failed"; exit 0; }
    fi
    rm -rf "$KERNEL_DIR.tmp" && mkdir -p "$DIR/kernel"
    dpkg -x "$(ls -t "$DIR/debs/${KPKG}"_*.deb | head -1)" "$KERNEL_DIR.tmp"
    # Only what the harness uses: the kernel image, its config and the modules tree.
    /bin/busybox depmod -b "$KERNEL_DIR.tmp" "$KVER"
    rm -rf "$KERNEL_DIR" && mv "$KERNEL_DIR.tmp" "$KERNEL_DIR"
    rm -f "$DIR/debs/${KPKG}"_*.deb   # ~70 MB; the extracted tree is what is kept
fi

cat > "$ENV.tmp" <<EOF
# written by guest-harness/provision.sh
STAMP=$STAMP_VERSION
KVER=$KVER
KERNEL_DIR=$KERNEL_DIR
QEMU=$QEMU
QEMU_DATADIR=$QEMU_DATADIR
BUSYBOX=/bin/busybox
NVME=$(command -v nvme || echo /usr/sbin/nvme)
EOF
mv "$ENV.tmp" "$ENV"
chmod -R a+rX "$DIR"
log "provisioned: kernel $KVER, $("$QEMU" --version | head -1), cache $DIR"
