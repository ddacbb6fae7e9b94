#!/bin/busybox sh
# /init of virtkit's test guests, packed by crates/virtkit-lab (`initramfs()`).
# Mounts the basics, prints the marker tests wait for, runs /check.sh (the script the
# test asked for), prints its exit status, then powers the guest off. With
# `virtkit.dmesg` on the kernel command line it prints the kernel log after the marker.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "VIRTKIT-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
# `virtkit.dmesg` on the kernel command line: the kernel's log, after the marker (so the
# boot's timing does not include printing it), e.g. with `initcall_debug`.
# Initcalls that took no time and the "calling" lines are left out: the serial console is
# slow in the lab.
if grep -q virtkit.dmesg /proc/cmdline; then
  dmesg | grep -v -e '^\[[ 0-9.]*\] calling ' -e ' after 0 usecs$'
fi
sh /check.sh
echo "VIRTKIT-CHECK-EXIT=$?"
poweroff -f
