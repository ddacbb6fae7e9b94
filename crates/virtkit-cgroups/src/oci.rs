//! Filling [`Resources`] from an OCI runtime spec (feature `oci`).

use oci_spec::runtime::{LinuxDeviceType, LinuxResources, LinuxThrottleDevice};

use crate::devices::{DeviceAccess, DeviceRule, DeviceType};
use crate::error::{Error, Result};
use crate::resources::{DeviceNumber, Resources, ThrottleDevice, WeightDevice};

fn device(field: &'static str, major: i64, minor: i64) -> Result<DeviceNumber> {
    match (u64::try_from(major), u64::try_from(minor)) {
        (Ok(ma), Ok(mi)) => Ok(DeviceNumber::new(ma, mi)),
        _ => Err(Error::InvalidResource {
            field,
            reason: format!("device {major}:{minor} has a negative number"),
        }),
    }
}

fn throttles(
    field: &'static str,
    list: &Option<Vec<LinuxThrottleDevice>>,
) -> Result<Vec<ThrottleDevice>> {
    list.iter()
        .flatten()
        .map(|t| {
            Ok(ThrottleDevice {
                device: device(field, t.major(), t.minor())?,
                rate: t.rate(),
            })
        })
        .collect()
}

impl Resources {
    /// The resources of an OCI spec's `linux.resources`, field by field (in
    /// v1 terms, as the spec has them; the v2 backend converts). Devices,
    /// hugepages, network and rdma are not handled here (devices belong to
    /// the runtime's device policy). Negative device numbers are rejected.
    pub fn from_oci(r: &LinuxResources) -> Result<Resources> {
        let mut out = Resources::default();
        if let Some(m) = r.memory() {
            out.memory.limit = m.limit();
            out.memory.reservation = m.reservation();
            out.memory.swap = m.swap();
            out.memory.swappiness = m.swappiness();
            out.memory.disable_oom_killer = m.disable_oom_killer();
        }
        if let Some(c) = r.cpu() {
            out.cpu.shares = c.shares();
            out.cpu.quota = c.quota();
            out.cpu.period = c.period();
            out.cpu.burst = c.burst();
            out.cpu.idle = c.idle();
            out.cpu.realtime_runtime = c.realtime_runtime();
            out.cpu.realtime_period = c.realtime_period();
            out.cpu.cpus.clone_from(c.cpus());
            out.cpu.mems.clone_from(c.mems());
        }
        if let Some(p) = r.pids() {
            out.pids.limit = Some(p.limit());
        }
        if let Some(b) = r.block_io() {
            out.block_io.weight = b.weight();
            for w in b.weight_device().iter().flatten() {
                if let Some(weight) = w.weight() {
                    out.block_io.weight_device.push(WeightDevice {
                        device: device("block_io.weight_device", w.major(), w.minor())?,
                        weight,
                    });
                }
            }
            out.block_io.throttle_read_bps_device = throttles(
                "block_io.throttle_read_bps_device",
                b.throttle_read_bps_device(),
            )?;
            out.block_io.throttle_write_bps_device = throttles(
                "block_io.throttle_write_bps_device",
                b.throttle_write_bps_device(),
            )?;
            out.block_io.throttle_read_iops_device = throttles(
                "block_io.throttle_read_iops_device",
                b.throttle_read_iops_device(),
            )?;
            out.block_io.throttle_write_iops_device = throttles(
                "block_io.throttle_write_iops_device",
                b.throttle_write_iops_device(),
            )?;
        }
        if let Some(list) = r.devices() {
            let mut rules = Vec::new();
            for d in list {
                let kind = match d.typ() {
                    None | Some(LinuxDeviceType::A) => DeviceType::All,
                    Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => DeviceType::Char,
                    Some(LinuxDeviceType::B) => DeviceType::Block,
                    // FIFOs are not governed by the device controller.
                    Some(LinuxDeviceType::P) => continue,
                };
                let num = |n: Option<i64>| -> Result<Option<u32>> {
                    match n {
                        None => Ok(None),
                        Some(v) if v < 0 => Ok(None), // -1 is the wildcard
                        Some(v) => u32::try_from(v)
                            .map(Some)
                            .map_err(|_| Error::InvalidResource {
                                field: "devices",
                                reason: format!("device number {v} is too large"),
                            }),
                    }
                };
                rules.push(DeviceRule {
                    allow: d.allow(),
                    kind,
                    major: num(d.major())?,
                    minor: num(d.minor())?,
                    access: DeviceAccess::parse(d.access().as_deref().unwrap_or(""))?,
                });
            }
            out.devices = Some(rules);
        }
        if let Some(u) = r.unified() {
            out.unified = u.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_oci_json() {
        let json = r#"{
            "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200, "swappiness": 10},
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "burst": 1000, "cpus": "0-1", "mems": "0", "idle": 1, "realtimeRuntime": 950000, "realtimePeriod": 1000000},
            "pids": {"limit": 32},
            "blockIO": {
                "weight": 500,
                "weightDevice": [{"major": 254, "minor": 0, "weight": 100}, {"major": 7, "minor": 0, "leafWeight": 10}],
                "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 100}]
            },
            "unified": {"memory.high": "90M"},
            "devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                {"allow": true, "type": "b", "major": 8, "access": "r"},
                {"allow": true, "type": "p", "major": 0, "minor": 0}
            ]
        }"#;
        let spec: LinuxResources = serde_json::from_str(json).unwrap();
        let r = Resources::from_oci(&spec).unwrap();
        assert_eq!(r.memory.limit, Some(100 << 20));
        assert_eq!(r.memory.reservation, Some(50 << 20));
        assert_eq!(r.memory.swap, Some(200 << 20));
        assert_eq!(r.memory.swappiness, Some(10));
        assert_eq!(r.cpu.shares, Some(512));
        assert_eq!(r.cpu.quota, Some(20_000));
        assert_eq!(r.cpu.period, Some(100_000));
        assert_eq!(r.cpu.burst, Some(1000));
        assert_eq!(r.cpu.idle, Some(1));
        assert_eq!(r.cpu.realtime_runtime, Some(950_000));
        assert_eq!(r.cpu.realtime_period, Some(1_000_000));
        assert_eq!(r.cpu.cpus.as_deref(), Some("0-1"));
        assert_eq!(r.pids.limit, Some(32));
        assert_eq!(r.block_io.weight, Some(500));
        assert_eq!(
            r.block_io.weight_device,
            vec![WeightDevice {
                device: DeviceNumber::new(254, 0),
                weight: 100
            }]
        );
        assert_eq!(r.block_io.throttle_read_bps_device[0].rate, 1 << 20);
        assert_eq!(
            r.block_io.throttle_write_iops_device[0].device.to_string(),
            "254:0"
        );
        assert_eq!(
            r.unified.get("memory.high").map(String::as_str),
            Some("90M")
        );
        let lines: Vec<String> = r.devices.unwrap().iter().map(DeviceRule::v1_line).collect();
        assert_eq!(lines, ["a *:* rwm", "c 1:3 rw", "b 8:* r"]);

        let bad: LinuxResources = serde_json::from_str(
            r#"{"blockIO": {"throttleReadBpsDevice": [{"major": -1, "minor": 0, "rate": 1}]}}"#,
        )
        .unwrap();
        assert!(matches!(
            Resources::from_oci(&bad),
            Err(Error::InvalidResource { .. })
        ));
        assert_eq!(
            Resources::from_oci(&LinuxResources::default()).unwrap(),
            Resources::default()
        );
    }
}
