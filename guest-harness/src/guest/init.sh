#!/bin/sh
# /init of the guest-harness initramfs (busybox-static + Debian cloud kernel modules).
# Console (kernel + these messages) is ttyS0; the test script's stdout+stderr go to ttyS1, so
# kernel messages never interleave with lines a test asserts on.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
KVER=$(uname -r)
say() { echo "guest-harness: $* (uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
say "init, kernel $KVER"

# The builder wrote the boot modules in dependency order ("path [params]" per line).
while read -r ko args; do
    [ -n "$ko" ] || continue
    # shellcheck disable=SC2086
    insmod "/lib/modules/$KVER/$ko" $args || say "insmod $ko failed"
done < /etc/modules.load
mount -t configfs configfs /sys/kernel/config

NET=1
for p in $(cat /proc/cmdline); do
    case "$p" in guest_harness.net=0) NET=0 ;; esac
done
ip link set lo up
if [ $NET = 1 ]; then
    # virtio-net probes asynchronously after insmod: bounded wait for eth0 (5 s)
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
        || say "eth0 setup failed"
fi
say "network done (net=$NET)"

OUT=/dev/ttyS1
[ -c $OUT ] || OUT=/dev/console
# no \n -> \r\n translation on the output port (the host strips \r anyway)
stty -F $OUT -opost 2>/dev/null
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/guest-harness/script/raw
if [ -r $FW ]; then
    cp $FW /tmp/script.sh
    say "running script"
    (cd /tmp && sh -c '. /lib/guest-harness.sh && . /tmp/script.sh') > $OUT 2>&1 < /dev/null
    rc=$?
else
    say "no script in fw_cfg"
    rc=254
fi
echo "GUEST-HARNESS-RESULT: rc=$rc" > $OUT
say "script finished rc=$rc"
sync
poweroff -f
