//! The `argus-agent` binary as a user runs it: output validated by the real promtool,
//! values checked against the kernel, config errors as an operator sees them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_argus-agent"));
    // A config that needs no Docker engine and no state dir, so the test is hermetic
    // about what it checks; the container collector has its own tests.
    c.env_remove("RUST_LOG");
    c
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("argus-agent.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run argus-agent")
}

/// Parses exposition text into (name, labels, value) rows; enough for assertions.
fn parse_samples(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, rest) = match line.find('}') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => line.split_at(line.find(' ').unwrap()),
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        // Values in these tests contain no escaped quotes or commas.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        let value = rest.split_whitespace().next().unwrap();
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        out.push((name.to_string(), map, value));
    }
    out
}

fn collect_once(extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[containers]\nenabled = false\n{extra}"),
    );
    let out = run(agent()
        .args(["--config"])
        .arg(&cfg)
        .args(["collect", "--once"]));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn collect_once_passes_promtool_check_metrics() {
    let Some(promtool) = argus_testkit::promtool::find() else {
        return;
    };
    let text = collect_once("");
    if let Err(e) = argus_testkit::promtool::check_metrics(&promtool, &text) {
        panic!("{e}");
    }
}

#[test]
fn collect_once_agrees_with_the_kernel() {
    let text = collect_once("");
    let samples = parse_samples(&text);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (name, labels, _) in &samples {
        assert_eq!(
            labels.get("instance").map(String::as_str),
            Some(host.trim()),
            "{name}"
        );
        assert!(labels.contains_key("job"), "{name} has no job");
    }
    let mem_total_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let mem = samples
        .iter()
        .find(|s| s.0 == "node_memory_MemTotal_bytes")
        .expect("node_memory_MemTotal_bytes");
    assert_eq!(mem.2, mem_total_kb * 1024.0);
    assert_eq!(mem.1["job"], "node");

    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    for cpu in 0..cpus {
        for mode in [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ] {
            assert!(
                samples.iter().any(|s| s.0 == "node_cpu_seconds_total"
                    && s.1["cpu"] == cpu.to_string()
                    && s.1["mode"] == mode),
                "no node_cpu_seconds_total for cpu {cpu} mode {mode}"
            );
        }
    }
    assert!(
        samples
            .iter()
            .any(|s| s.0 == "argus_agent_build_info" && s.1["job"] == "argus-agent")
    );
}

#[test]
fn json_format_is_valid_json_with_the_same_series() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[containers]\nenabled = false\n");
    let out = run(agent()
        .args(["--config"])
        .arg(&cfg)
        .args(["collect", "--once", "--format", "json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fams = v["families"].as_array().unwrap();
    let load = fams.iter().find(|f| f["name"] == "node_load1").unwrap();
    assert_eq!(load["type"], "gauge");
    assert_eq!(load["samples"][0]["labels"]["job"], "node");
}

#[test]
fn example_config_is_valid_and_documents_the_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
    let out = run(agent().arg("check-config").arg(&example));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cfg, problems) = argus_agent::config::AgentConfig::load(&example, Vec::new());
    assert!(problems.is_empty());
    assert_eq!(
        cfg.unwrap(),
        argus_agent::config::AgentConfig::default(),
        "deploy/agent.example.toml must state the real defaults"
    );
}

#[test]
fn check_config_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[agent]\nintervall = \"5s\"\n[[probe]]\nname = \"web\"\nurl = \"htp:/nope\"\n",
    );
    let out = run(agent().arg("check-config").arg(&cfg));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    assert!(
        err.contains(&format!("{file}: unknown key `agent.intervall`")),
        "{err}"
    );
    assert!(err.contains(&format!("{file}: probe[0].url:")), "{err}");

    let bad_type = write_config(dir.path(), "[spool]\nmax_bytes = \"lots\"\n");
    let out = run(agent().arg("check-config").arg(&bad_type));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool.max_bytes"), "{err}");

    let out = run(agent()
        .arg("check-config")
        .arg(dir.path().join("missing.toml")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read"));
}

#[test]
fn a_bad_probe_does_not_stop_collection() {
    // The malformed probe is reported and left out; host metrics still flow.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[containers]\nenabled = false\n[agent]\nintervall = 1\n[[probe]]\nname = \"bad\"\nurl = \"::::\"\n",
    );
    let out = run(agent()
        .args(["--config"])
        .arg(&cfg)
        .args(["collect", "--once"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("probe[0].url"), "{err}");
    assert!(err.contains("agent.intervall"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("node_load1{"));
}

#[test]
fn an_unreachable_docker_socket_is_reported_and_the_rest_collected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[containers]\ndocker_socket = \"unix:///nonexistent/docker.sock\"\n",
    );
    let out = run(agent()
        .args(["--config"])
        .arg(&cfg)
        .args(["collect", "--once"]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/docker.sock"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node_load1{"));
    assert!(text.contains("argus_agent_collector_errors_total{collector=\"containers\""));
}

#[test]
fn an_unreadable_proc_root_is_reported_and_the_rest_collected() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("proc");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("loadavg"), "0.50 0.40 0.30 1/100 4242\n").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[containers]\nenabled = false\n[host]\nproc_root = \"{}\"\n",
            fake.display()
        ),
    );
    let out = run(agent()
        .args(["--config"])
        .arg(&cfg)
        .args(["collect", "--once"]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}/meminfo", fake.display())),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node_load1{"), "{text}");
    assert!(text.contains(" 0.5 "), "{text}");
}
