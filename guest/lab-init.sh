#!/bin/busybox sh
# /init of the lab VM, packed by crates/virtkit-lab (`run()`): a QEMU TCG machine with
# emulated AMD SVM whose /dev/kvm boots real Linux guests.
# Stage 1 copies the initramfs into a tmpfs and switches to it, so that pivot_root
# works inside the lab (container runtimes need it). Stage 2 mounts the usual file
# systems with real cgroup v2, loads the modules listed in /lab/modules (kvm-amd, tun,
# bridge, veth, ...), runs /payload/run.sh and prints its exit status with the nonce
# from the kernel command line. A heartbeat goes to the second serial port meanwhile.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ ! -e /.lab-stage2 ]; then
  /bin/busybox mkdir -p /newroot /proc
  /bin/busybox mount -t tmpfs -o mode=0755 tmpfs /newroot
  for e in /*; do
    case "$e" in /newroot|/proc|/sys|/dev) ;; *) /bin/busybox cp -a "$e" /newroot/ ;; esac
  done
  /bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
  /bin/busybox touch /newroot/.lab-stage2
  exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin 2>/dev/null
mkdir -p /proc /sys /dev /tmp /run /var/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in $(cat /lab/modules); do insmod "/lab/mods/$m.ko" || echo "lab: insmod $m failed"; done
ip link set lo up
hostname lab
nonce=$(sed -n 's/.*virtkit.nonce=\([^ ]*\).*/\1/p' /proc/cmdline)
kvm=no; [ -c /dev/kvm ] && kvm=yes
echo "VIRTKIT-LAB-UP uptime=$(cut -d' ' -f1 /proc/uptime) kvm=$kvm"
# The heartbeat (crates/virtkit-lab/src/heartbeat.rs): the uptime on the second serial
# port every 5 s, so that the host can tell a wedged lab kernel from a slow payload.
if [ -c /dev/ttyS1 ]; then
  ( while :; do cut -d' ' -f1 /proc/uptime; sleep 5; done ) </dev/null >/dev/ttyS1 2>/dev/null &
fi
if [ "$kvm" = yes ]; then
  cd /payload && sh ./run.sh </dev/null 2>&1
  code=$?
else
  code=125
fi
echo "VIRTKIT-LAB-EXIT=$nonce:$code"
poweroff -f
