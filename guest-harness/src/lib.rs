//! Real Linux guests under QEMU as test peers (NVMe/TCP initiator or target, virtio-blk on
//! vhost-user-blk).
