//! The host collector against the real kernel of the machine running the tests.
//!
//! The expectations are read from /proc independently of the collector's parsers.
//! Mounts and interfaces can come and go while the tests run (other tests start
//! containers), so only those present both before and after the collection are
//! required to appear.

use argus_agent::collect::host::{HostCollector, HostConfig, matches_pattern, unescape_octal};
use argus_agent::collect::{CollectError, Families};
use std::collections::{BTreeMap, BTreeSet};

fn collect() -> (Families, Vec<CollectError>) {
    let mut collector = HostCollector::new(HostConfig::default());
    let mut out = Families::new();
    let mut errors = Vec::new();
    collector.collect(&mut out, &mut errors);
    (out, errors)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The table the collector documents it reads: init's, else the reader's own.
fn read_preferring_init(init: &str, own: &str) -> String {
    std::fs::read_to_string(init).unwrap_or_else(|_| read(own))
}

fn label_values(out: &Families, metric: &str, label: &str) -> BTreeSet<String> {
    out.get(metric)
        .unwrap_or_else(|| panic!("no {metric}"))
        .points
        .iter()
        .filter_map(|(l, _)| l.get(label).map(str::to_string))
        .collect()
}

fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches_pattern(p, name))
}

#[test]
fn a_real_kernel_is_read_without_errors() {
    let (out, errors) = collect();
    assert!(errors.is_empty(), "errors on a real kernel: {errors:#?}");
    assert!(out.len() > 50, "only {} families", out.len());
}

#[test]
fn memtotal_matches_proc_meminfo() {
    let meminfo = read("/proc/meminfo");
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    let (out, _) = collect();
    let family = out
        .get("node_memory_MemTotal_bytes")
        .expect("MemTotal metric");
    assert_eq!(family.points.len(), 1);
    assert_eq!(family.points[0].1, kb * 1024.0);
}

#[test]
fn every_cpu_has_every_mode() {
    let cpus: BTreeSet<String> = read("/proc/stat")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|k| k.strip_prefix("cpu"))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    assert!(!cpus.is_empty());
    let (out, _) = collect();
    let family = out.get("node_cpu_seconds_total").expect("cpu metric");
    let modes = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for cpu in &cpus {
        for mode in modes {
            let found = family.points.iter().any(|(l, v)| {
                l.get("cpu") == Some(cpu.as_str()) && l.get("mode") == Some(mode) && *v >= 0.0
            });
            assert!(
                found,
                "no node_cpu_seconds_total{{cpu={cpu:?},mode={mode:?}}}"
            );
        }
    }
    assert_eq!(family.points.len(), cpus.len() * modes.len());
}

/// Mount point → fstype of the entry the kernel resolves the path to (the last one).
fn real_mounts(cfg: &HostConfig) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    for line in read_preferring_init("/proc/1/mounts", "/proc/mounts").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 3 {
            last.insert(
                unescape_octal(fields[1]).into_owned(),
                fields[2].to_string(),
            );
        }
    }
    last.retain(|mount_point, fs_type| {
        !any_matches(&cfg.fs_types_exclude, fs_type)
            && !any_matches(&cfg.mount_points_exclude, mount_point)
    });
    last
}

#[test]
fn every_real_mount_has_filesystem_metrics() {
    let cfg = HostConfig::default();
    let before = real_mounts(&cfg);
    let (out, _) = collect();
    let after = real_mounts(&cfg);
    assert!(before.contains_key("/"), "no / among {before:?}");

    let reported = label_values(&out, "node_filesystem_device_error", "mountpoint");
    let sized = label_values(&out, "node_filesystem_size_bytes", "mountpoint");
    let errored: BTreeSet<String> = out
        .get("node_filesystem_device_error")
        .map(|f| {
            f.points
                .iter()
                .filter(|(_, v)| *v != 0.0)
                .filter_map(|(l, _)| l.get("mountpoint").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(sized.contains("/"), "/ has no size: {sized:?}");
    for (mount_point, fs_type) in &before {
        if after.get(mount_point) != Some(fs_type) {
            continue; // mounted or unmounted meanwhile
        }
        assert!(
            reported.contains(mount_point),
            "{mount_point} ({fs_type}) missing from {reported:?}"
        );
        // A mount this user may not stat (someone's FUSE mount) reports device_error
        // instead, as node_exporter does; every other one has a size.
        assert!(
            sized.contains(mount_point) || errored.contains(mount_point),
            "{mount_point} ({fs_type}) has neither a size nor a device error"
        );
    }
    for mount_point in &reported {
        assert!(
            !any_matches(&cfg.mount_points_exclude, mount_point),
            "excluded {mount_point} was reported"
        );
    }
}

fn net_devices() -> BTreeSet<String> {
    read_preferring_init("/proc/1/net/dev", "/proc/net/dev")
        .lines()
        .filter(|l| !l.contains('|'))
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn every_network_device_appears() {
    let before = net_devices();
    let (out, _) = collect();
    let after = net_devices();
    assert!(!before.is_empty());
    for metric in [
        "node_network_receive_bytes_total",
        "node_network_receive_packets_total",
        "node_network_receive_errs_total",
        "node_network_receive_drop_total",
        "node_network_transmit_bytes_total",
        "node_network_transmit_packets_total",
        "node_network_transmit_errs_total",
        "node_network_transmit_drop_total",
    ] {
        let reported = label_values(&out, metric, "device");
        for device in before.intersection(&after) {
            assert!(reported.contains(device), "{device} missing from {metric}");
        }
    }
}

#[test]
fn every_whole_disk_appears() {
    let cfg = HostConfig::default();
    let disks = || -> BTreeSet<String> {
        read("/proc/diskstats")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
            .filter(|d| !argus_agent::collect::host::disk_excluded(&cfg.disk_devices_exclude, d))
            .collect()
    };
    let before = disks();
    let (out, _) = collect();
    let after = disks();
    if before.is_empty() {
        return; // a machine with no block devices besides loops and ramdisks
    }
    let reported = label_values(&out, "node_disk_read_bytes_total", "device");
    for disk in before.intersection(&after) {
        assert!(reported.contains(disk), "{disk} missing: {reported:?}");
    }
}

#[test]
fn uname_describes_this_kernel() {
    let (out, _) = collect();
    let family = out.get("node_uname_info").expect("uname metric");
    assert_eq!(family.points.len(), 1);
    let (labels, v) = &family.points[0];
    assert_eq!(*v, 1.0);
    let kernel = |f: &str| read(&format!("/proc/sys/kernel/{f}")).trim().to_string();
    assert_eq!(labels.get("sysname"), Some(kernel("ostype").as_str()));
    assert_eq!(labels.get("release"), Some(kernel("osrelease").as_str()));
    assert_eq!(labels.get("version"), Some(kernel("version").as_str()));
    assert_eq!(labels.get("nodename"), Some(kernel("hostname").as_str()));
    assert!(!labels.get("machine").unwrap_or_default().is_empty());
}
