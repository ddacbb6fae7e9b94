#!/bin/busybox sh
# /init of virtkit's test guests, packed by crates/virtkit-lab (`initramfs()`).
# Mounts the basics, prints the marker tests wait for, runs /check.sh (the script the
# test asked for), prints its exit status, then powers the guest off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "VIRTKIT-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
sh /check.sh
echo "VIRTKIT-CHECK-EXIT=$?"
poweroff -f
