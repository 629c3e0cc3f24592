# guest-harness shell helpers: sourced before every guest script (busybox ash).
# Results are printed as KEY=VALUE lines (GuestOutput::value on the host reads them).
HARNESS_HOSTNQN=$(cat /etc/nvme/hostnqn)
HARNESS_HOSTID=$(cat /etc/nvme/hostid)

# wait_for PATH [SECONDS=10]: bounded wait until PATH exists
wait_for() {
    _n=$((${2:-10} * 10))
    while [ ! -e "$1" ]; do
        [ $_n -le 0 ] && { echo "wait_for: $1 did not appear" >&2; return 1; }
        sleep 0.1
        _n=$((_n - 1))
    done
}

# nullb_create SIZE_MIB [BLOCK_SIZE=512]: memory-backed null_blk (configfs); sets NULLB=/dev/nullbN
nullb_create() {
    [ -d /sys/kernel/config/nullb ] || modprobe null_blk nr_devices=0 || return 1
    # with nr_devices=0 configfs devices get indexes 0, 1, ... in creation order; naming the
    # directory the same works whether the kernel names disks by index or by directory
    _i=$(ls /sys/kernel/config/nullb | grep -c '^nullb')
    _d=/sys/kernel/config/nullb/nullb$_i
    mkdir "$_d" && echo "$1" > "$_d/size" && echo "${2:-512}" > "$_d/blocksize" \
        && echo 1 > "$_d/memory_backed" && echo 1 > "$_d/power" || return 1
    NULLB=/dev/nullb$_i
    wait_for "$NULLB" 5
}

# nvmet_target NQN DEVICE [TRADDR=0.0.0.0] [TRSVCID=4420] [PORTID=1]: kernel NVMe/TCP target
# (nvmet-tcp via configfs) exporting DEVICE as namespace 1 to any host; prints
# NVMET_LISTEN=addr:port then NVMET_READY=NQN once the port listens.
nvmet_target() {
    _s=/sys/kernel/config/nvmet/subsystems/$1
    _p=/sys/kernel/config/nvmet/ports/${5:-1}
    mkdir "$_s" && echo 1 > "$_s/attr_allow_any_host" && mkdir "$_s/namespaces/1" \
        && echo -n "$2" > "$_s/namespaces/1/device_path" && echo 1 > "$_s/namespaces/1/enable" \
        || { echo "nvmet_target: subsystem setup failed" >&2; return 1; }
    if [ ! -d "$_p" ]; then
        mkdir "$_p" && echo tcp > "$_p/addr_trtype" && echo ipv4 > "$_p/addr_adrfam" \
            && echo "${3:-0.0.0.0}" > "$_p/addr_traddr" && echo "${4:-4420}" > "$_p/addr_trsvcid" \
            || { echo "nvmet_target: port setup failed" >&2; return 1; }
    fi
    # linking the subsystem into the port opens the listening socket synchronously
    ln -s "$_s" "$_p/subsystems/$1" || { echo "nvmet_target: link failed" >&2; return 1; }
    echo "NVMET_LISTEN=${3:-0.0.0.0}:${4:-4420}"
    echo "NVMET_READY=$1"
}

# nvme_discover ADDR PORT: nvme-cli discovery; prints NVME_DISCOVER_SUBNQN=... per log entry
nvme_discover() {
    nvme discover -t tcp -a "$1" -s "$2" --hostnqn="$HARNESS_HOSTNQN" --hostid="$HARNESS_HOSTID" \
        > /tmp/discover.txt || { cat /tmp/discover.txt; return 1; }
    awk '/^subnqn:/ { print "NVME_DISCOVER_SUBNQN=" $2 }' /tmp/discover.txt
}

# nvme_connect_wait ADDR PORT NQN [SECONDS=20]: nvme connect, then wait for the namespace;
# sets and prints NVME_CTRL=/dev/nvmeX and NVME_DEV=/dev/nvmeYnZ
nvme_connect_wait() {
    nvme connect -t tcp -a "$1" -s "$2" -n "$3" --hostnqn="$HARNESS_HOSTNQN" \
        --hostid="$HARNESS_HOSTID" || { echo "nvme_connect_wait: connect failed" >&2; return 1; }
    _n=$((${4:-20} * 10))
    NVME_CTRL=
    NVME_DEV=
    while [ -z "$NVME_DEV" ]; do
        # native multipath (Debian's default): the block device hangs off the subsystem;
        # without it, off the controller. Hidden per-path nodes (nvmeXcYnZ) have no /dev entry.
        for _s in /sys/class/nvme-subsystem/* /sys/class/nvme/*; do
            [ "$(cat "$_s/subsysnqn" 2>/dev/null)" = "$3" ] || continue
            case "${_s##*/}" in nvme[0-9]*) NVME_CTRL=/dev/${_s##*/} ;; esac
            for _b in "$_s"/nvme*n*; do
                [ -b "/dev/${_b##*/}" ] && NVME_DEV=/dev/${_b##*/}
            done
        done
        [ -n "$NVME_DEV" ] && break
        [ $_n -le 0 ] && { echo "nvme_connect_wait: no namespace for $3" >&2; return 1; }
        sleep 0.1
        _n=$((_n - 1))
    done
    echo "NVME_CTRL=$NVME_CTRL"
    echo "NVME_DEV=$NVME_DEV"
}

# nvme_id_ctrl CTRL: prints NVME_MN=, NVME_SUBNQN=, NVME_CNTLID= of the controller
nvme_id_ctrl() {
    nvme id-ctrl "$1" > /tmp/id-ctrl.txt || return 1
    awk -F' : ' '/^mn /{v=$2; gsub(/ +$/,"",v); print "NVME_MN=" v}
                 /^subnqn /{print "NVME_SUBNQN=" $2} /^cntlid /{print "NVME_CNTLID=" $2}' /tmp/id-ctrl.txt
}

# io_check DEV MIB [OFFSET_MIB=0]: O_DIRECT write of MIB random MiB, read back, compare md5;
# prints MD5_WRITTEN=, MD5_READ= and IO_OK=1 when they match (returns 1 otherwise)
io_check() {
    dd if=/dev/urandom of=/tmp/io_pat bs=1M count="$2" 2>/dev/null || return 1
    dd if=/tmp/io_pat of="$1" bs=1M count="$2" seek="${3:-0}" oflag=direct 2>/dev/null \
        || { echo "io_check: write to $1 failed" >&2; return 1; }
    dd if="$1" of=/tmp/io_back bs=1M count="$2" skip="${3:-0}" iflag=direct 2>/dev/null \
        || { echo "io_check: read from $1 failed" >&2; return 1; }
    _a=$(md5sum < /tmp/io_pat)
    _b=$(md5sum < /tmp/io_back)
    rm -f /tmp/io_pat /tmp/io_back
    echo "MD5_WRITTEN=${_a%% *}"
    echo "MD5_READ=${_b%% *}"
    [ "$_a" = "$_b" ] || { echo "io_check: md5 mismatch" >&2; return 1; }
    echo "IO_OK=1"
}

# nvme_disconnect NQN
nvme_disconnect() {
    nvme disconnect -n "$1" > /dev/null && echo "NVME_DISCONNECTED=$1"
}

# idle: keep the guest (e.g. a target) running until the host kills it or its timeout
idle() {
    while :; do sleep 3600; done
}
