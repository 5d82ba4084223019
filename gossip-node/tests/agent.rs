//! The reference agent as a user runs it: real processes on loopback, driven
//! through its CLI and admin API.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]
#![allow(
    clippy::disallowed_methods,
    reason = "tests of real processes wait on wall-clock deadlines"
)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gossip-node");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A free loopback port for UDP and one for TCP (the OS picks them).
fn free_ports() -> (u16, u16) {
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (udp, tcp)
}

/// An agent process, killed if the test ends early.
struct Agent {
    child: Child,
    admin: String,
    gossip: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--admin", &self.admin]);
        run(&all)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// A CA and node certificates in `dir/certs`.
fn make_certs(dir: &Path, names: &[&str]) -> PathBuf {
    let certs = dir.join("certs");
    let certs_str = certs.to_str().unwrap();
    let out = run(&["certs", "init-ca", "--cluster", "test", "--dir", certs_str]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in names {
        let out = run(&[
            "certs", "issue", "--ca-dir", certs_str, "--name", name, "--out", certs_str,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    certs
}

/// Starts `gossip-node agent --config config` with `envs`, its log going to
/// `log` (or nowhere), listening on the given loopback ports.
fn spawn_agent(
    config: &Path,
    envs: &[(&str, String)],
    log: Option<&Path>,
    ports: (u16, u16),
) -> Agent {
    let stderr = log.map_or_else(Stdio::null, |path| {
        std::fs::File::create(path).unwrap().into()
    });
    let child = Command::new(BIN)
        .args(["agent", "--config", config.to_str().unwrap()])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Agent {
        child,
        gossip: format!("127.0.0.1:{}", ports.0),
        admin: format!("127.0.0.1:{}", ports.1),
    }
}

/// Writes a config for `name` and starts an agent from it.
fn start(dir: &Path, certs: &Path, name: &str, seeds: &[&Agent]) -> Agent {
    let (gossip, admin) = free_ports();
    let seeds: Vec<String> = seeds.iter().map(|a| format!("\"{}\"", a.gossip)).collect();
    let config = format!(
        r#"cluster = "test"
name = "{name}"
bind = "127.0.0.1:{gossip}"
seeds = [{seeds}]
preset = "local"
data_dir = "data/{name}"
[tls]
ca = "{certs}/ca.crt"
cert = "{certs}/{name}.crt"
key = "{certs}/{name}.key"
[admin]
bind = "127.0.0.1:{admin}"
[keys]
role = "{name}-role"
"#,
        seeds = seeds.join(", "),
        certs = certs.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let agent = spawn_agent(
        &path,
        &[("GOSSIP_LOG_FORMAT", "json".to_string())],
        None,
        (gossip, admin),
    );
    eventually(
        Duration::from_secs(20),
        "the agent's admin API answers",
        || agent.cli(&["status"]).status.success(),
    );
    agent
}

fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn members_json(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.cli(&["members", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("members --json is JSON")
}

fn status_of(agent: &Agent, name: &str) -> Option<String> {
    members_json(agent)
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["status"].as_str().map(str::to_string))
}

#[test]
fn agents_join_share_keys_serve_json_and_metrics_and_leave_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["a", "b", "c"]);
    let a = start(dir.path(), &certs, "a", &[]);
    let b = start(dir.path(), &certs, "b", &[&a]);
    let mut c = start(dir.path(), &certs, "c", &[&a]);
    for agent in [&a, &b, &c] {
        eventually(Duration::from_secs(20), "three alive members", || {
            members_json(agent)
                .iter()
                .filter(|m| m["status"] == "alive")
                .count()
                == 3
        });
    }
    // The table is aligned and names every member.
    let table = stdout(&a.cli(&["members"]));
    assert!(table.starts_with("Node"), "{table}");
    for name in ["a", "b", "c"] {
        assert!(table.lines().any(|l| l.starts_with(name)), "{table}");
    }

    // Keys: the configured one, and one set through the CLI.
    assert!(b.cli(&["kv", "set", "color", "blue"]).status.success());
    eventually(Duration::from_secs(20), "b's key reaches a", || {
        let out = a.cli(&["kv", "get", "b", "color"]);
        out.status.success() && stdout(&out).trim() == "blue"
    });
    assert_eq!(stdout(&a.cli(&["kv", "get", "c", "role"])).trim(), "c-role");
    let missing = a.cli(&["kv", "get", "b", "nothing"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("no key"), "{}", stderr(&missing));

    // The admin API answers JSON; /metrics is Prometheus text.
    let status = a.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["alive"], 3);
    let metrics = ureq::get(&format!("http://{}/metrics", a.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let mut samples = 0;
    for line in metrics.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name and value");
        assert!(
            name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
            "{line}"
        );
        value.parse::<f64>().expect("a number");
        samples += 1;
    }
    assert!(samples > 20, "{metrics}");
    assert!(metrics.contains("gossip_members{status=\"alive\"} 3"));

    // SIGTERM: c leaves gracefully, and the others see it as left.
    c.signal("TERM");
    let exit = c.wait_exit(Duration::from_secs(20)).expect("c exits");
    assert!(exit.success(), "{exit:?}");
    for agent in [&a, &b] {
        eventually(Duration::from_secs(20), "c is seen as left", || {
            status_of(agent, "c").as_deref() == Some("left")
        });
    }

    // `leave` through the CLI does the same for b.
    let mut b = b;
    assert!(b.cli(&["leave"]).status.success());
    assert!(
        b.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    eventually(Duration::from_secs(20), "b is seen as left", || {
        status_of(&a, "b").as_deref() == Some("left")
    });
}

#[test]
fn mistakes_get_errors_that_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["a"]);
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = format!(
        "[tls]\nca = \"{c}/ca.crt\"\ncert = \"{c}/a.crt\"\nkey = \"{c}/a.key\"\n",
        c = certs.display()
    );
    let agent = |path: &Path| run(&["agent", "--config", path.to_str().unwrap()]);

    // A misspelled key.
    let path = write("typo.toml", format!("name = \"a\"\nseedz = []\n{tls}"));
    let err = stderr(&agent(&path));
    assert!(err.contains("unknown field `seedz`"), "{err}");
    assert!(err.contains("expected one of"), "{err}");

    // An unspecified bind address with nothing to advertise.
    let path = write(
        "any.toml",
        format!("name = \"a\"\nbind = \"0.0.0.0:0\"\n{tls}"),
    );
    let err = stderr(&agent(&path));
    assert!(err.contains("advertise"), "{err}");

    // An advertise address that is not this host's: a warning, not an error
    // (it is right behind NAT). 192.0.2.1 is a documentation address; no
    // traffic goes to it, as the node has no seeds.
    let (gossip, admin) = free_ports();
    let path = write(
        "elsewhere.toml",
        format!(
            "name = \"a\"\nbind = \"127.0.0.1:{gossip}\"\nadvertise = \"192.0.2.1:{gossip}\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n{tls}"
        ),
    );
    let log = dir.path().join("elsewhere.log");
    let _running = spawn_agent(&path, &[], Some(&log), (gossip, admin));
    eventually(
        Duration::from_secs(20),
        "a warning about the advertise address",
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("not an address of this host")),
    );

    // A certificate from another cluster's CA.
    let other = dir.path().join("other");
    let out = run(&["certs", "init-ca", "--dir", other.to_str().unwrap()]);
    assert!(out.status.success());
    let path = write(
        "foreign.toml",
        format!(
            "name = \"a\"\nbind = \"127.0.0.1:0\"\n[tls]\nca = \"{o}/ca.crt\"\ncert = \"{c}/a.crt\"\nkey = \"{c}/a.key\"\n",
            o = other.display(),
            c = certs.display()
        ),
    );
    let err = stderr(&agent(&path));
    assert!(err.contains("another cluster's CA"), "{err}");
    assert!(err.contains("certs issue"), "{err}");

    // A port in use.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = write(
        "taken.toml",
        format!("name = \"a\"\nbind = \"127.0.0.1:{port}\"\n{tls}"),
    );
    let err = stderr(&agent(&path));
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(err.contains("another agent"), "{err}");

    // No agent to talk to.
    let (_, free) = free_ports();
    let out = run(&["members", "--admin", &format!("127.0.0.1:{free}")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is `gossip-node agent` running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_sample_config_runs_with_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["node-1"]);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml");
    let config = dir.path().join("agent.toml");
    std::fs::copy(&sample, &config).unwrap();
    let (gossip, admin) = free_ports();
    let log = dir.path().join("agent.log");
    // The environment overrides the file's addresses; the file's seed is
    // left as it is, with no agent there.
    let envs = [
        ("GOSSIP_BIND", format!("127.0.0.1:{gossip}")),
        ("GOSSIP_ADMIN", format!("127.0.0.1:{admin}")),
    ];
    let mut agent = spawn_agent(&config, &envs, Some(&log), (gossip, admin));
    eventually(Duration::from_secs(20), "the agent answers", || {
        agent.cli(&["status"]).status.success()
    });
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&agent.cli(&["status", "--json"]))).unwrap();
    assert_eq!(status["name"], "node-1");
    assert_eq!(status["cluster"], "demo");
    assert_eq!(status["addr"], agent.gossip);
    assert_eq!(
        stdout(&agent.cli(&["kv", "get", "node-1", "role"])).trim(),
        "cache"
    );
    assert!(dir.path().join("data/node-1/incarnation").exists());
    // The seed never answers: the agent says what to check.
    eventually(Duration::from_secs(30), "a warning about the seed", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("no seed has answered"))
    });
    agent.signal("INT");
    assert!(
        agent
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}
