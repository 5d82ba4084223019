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
    run_in(None, args)
}

/// The binary, in network namespace `netns` if one is given.
fn command_in(netns: Option<&str>) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, BIN]);
            command
        }
        None => Command::new(BIN),
    }
}

fn run_in(netns: Option<&str>, args: &[&str]) -> Output {
    command_in(netns)
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
    log: Option<PathBuf>,
    netns: Option<String>,
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
        run_in(self.netns.as_deref(), &all)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// What the agent has logged so far.
    fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
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
    spawn_agent_in(None, config, envs, log, ports)
}

/// As [`spawn_agent`], in network namespace `netns` if one is given.
fn spawn_agent_in(
    netns: Option<&str>,
    config: &Path,
    envs: &[(&str, String)],
    log: Option<&Path>,
    ports: (u16, u16),
) -> Agent {
    let stderr = log.map_or_else(Stdio::null, |path| {
        std::fs::File::create(path).unwrap().into()
    });
    let child = command_in(netns)
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
        log: log.map(Path::to_path_buf),
        netns: netns.map(str::to_string),
    }
}

/// How one agent is configured: a node's name (its certificate too), the
/// config file's name, its data directory, seeds and ports.
struct Spec<'a> {
    name: &'a str,
    file: &'a str,
    data_dir: Option<&'a str>,
    seeds: Vec<String>,
    ports: (u16, u16),
    /// Environment variables beside the JSON log format.
    envs: Vec<(&'a str, String)>,
    /// The network namespace to run in, if not this process's.
    netns: Option<&'a str>,
}

impl<'a> Spec<'a> {
    /// `name` in `name.toml`, with `data/name`, on free ports.
    fn new(name: &'a str, seeds: &[&Agent]) -> Self {
        Spec {
            name,
            file: name,
            data_dir: Some(name),
            seeds: seeds.iter().map(|a| a.gossip.clone()).collect(),
            ports: free_ports(),
            envs: Vec::new(),
            netns: None,
        }
    }
}

impl Spec<'_> {
    fn without_data_dir(self) -> Self {
        Spec {
            data_dir: None,
            ..self
        }
    }
}

/// Writes `spec`'s config and starts an agent from it, logging JSON to
/// `dir/<file>.log`, without waiting for it.
fn launch(dir: &Path, certs: &Path, spec: &Spec) -> Agent {
    let (gossip, admin) = spec.ports;
    let seeds: Vec<String> = spec.seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let data_dir = spec
        .data_dir
        .map(|d| format!("data_dir = \"data/{d}\"\n"))
        .unwrap_or_default();
    let config = format!(
        r#"cluster = "test"
name = "{name}"
bind = "127.0.0.1:{gossip}"
seeds = [{seeds}]
preset = "local"
{data_dir}[tls]
ca = "{certs}/ca.crt"
cert = "{certs}/{name}.crt"
key = "{certs}/{name}.key"
[admin]
bind = "127.0.0.1:{admin}"
[keys]
role = "{name}-role"
"#,
        name = spec.name,
        seeds = seeds.join(", "),
        certs = certs.display(),
    );
    let path = dir.join(format!("{}.toml", spec.file));
    std::fs::write(&path, config).unwrap();
    let log = dir.join(format!("{}.log", spec.file));
    let mut envs = vec![("GOSSIP_LOG_FORMAT", "json".to_string())];
    envs.extend(spec.envs.iter().cloned());
    spawn_agent_in(spec.netns, &path, &envs, Some(&log), spec.ports)
}

/// As [`launch`], waiting until the agent's admin API answers.
fn start_spec(dir: &Path, certs: &Path, spec: &Spec) -> Agent {
    let agent = launch(dir, certs, spec);
    eventually(
        Duration::from_secs(20),
        "the agent's admin API answers",
        || agent.cli(&["status"]).status.success(),
    );
    agent
}

/// Writes a config for `name` and starts an agent from it.
fn start(dir: &Path, certs: &Path, name: &str, seeds: &[&Agent]) -> Agent {
    start_spec(dir, certs, &Spec::new(name, seeds))
}

fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every one of `agents` sees `n` alive members.
fn until_alive(agents: &[&Agent], n: usize) {
    for agent in agents {
        eventually(Duration::from_secs(20), "every member alive", || {
            members_json(agent)
                .iter()
                .filter(|m| m["status"] == "alive")
                .count()
                == n
        });
    }
}

/// Starts three agents named `names`, the last two joining through the
/// first, and waits until each sees all three alive.
fn start_three(dir: &Path, certs: &Path, names: [&str; 3]) -> [Agent; 3] {
    let first = start(dir, certs, names[0], &[]);
    let second = start(dir, certs, names[1], &[&first]);
    let third = start(dir, certs, names[2], &[&first]);
    until_alive(&[&first, &second, &third], 3);
    [first, second, third]
}

fn members_json(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.cli(&["members", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("members --json is JSON")
}

fn status_of(agent: &Agent, name: &str) -> Option<String> {
    record_of(agent, name).map(|(_, status, _)| status)
}

#[test]
fn agents_join_share_keys_serve_json_and_metrics_and_leave_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["a", "b", "c"]);
    let [a, b, mut c] = start_three(dir.path(), &certs, ["a", "b", "c"]);
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

    // Ring state published through a key; the ring shows who owns what.
    let state = "normal load=2048 tokens=100,200";
    assert!(b.cli(&["kv", "set", "ring", state]).status.success());
    eventually(Duration::from_secs(20), "b owns the whole ring", || {
        stdout(&a.cli(&["ring"]))
            .lines()
            .any(|line| line.starts_with('b') && line.trim_end().ends_with("100.0%"))
    });
    let ring: Vec<serde_json::Value> =
        serde_json::from_str(&stdout(&a.cli(&["ring", "--json"]))).unwrap();
    let b_row = ring.iter().find(|m| m["name"] == "b").unwrap();
    assert_eq!(b_row["ring_status"], "normal");
    assert_eq!(b_row["load"], 2048);
    assert_eq!(b_row["tokens"], 2);
    assert!(ring.iter().find(|m| m["name"] == "a").unwrap()["ring_status"].is_null());

    // The admin API answers JSON; /metrics is Prometheus text.
    let status = a.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["alive"], 3);
    assert!(status["input_lag_ms"].is_u64(), "{status}");
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
    // The sample names one seed, a risk the status shows with its fix.
    let warnings = status["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().starts_with("one seed"));
    assert!(stdout(&agent.cli(&["status"])).contains("warning      one seed"));
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

/// Where `agent` holds the member named `name`: (address, status, incarnation).
fn record_of(agent: &Agent, name: &str) -> Option<(String, String, u64)> {
    members_json(agent)
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| {
            (
                m["addr"].as_str().unwrap_or_default().to_string(),
                m["status"].as_str().unwrap_or_default().to_string(),
                m["incarnation"].as_u64().unwrap_or_default(),
            )
        })
}

/// The value of one Prometheus sample, e.g. `gossip_x_total{kind="y"}`.
fn metric(agent: &Agent, sample: &str) -> f64 {
    let text = ureq::get(&format!("http://{}/metrics", agent.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

/// Copies a data directory's files (a node's certificate, key, incarnation
/// and keys), as an operator cloning a machine would.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A second process started from a copy of a running node's data
/// directory: refused at start, naming where the node runs; found at run
/// time, logged as an error on both sides and counted; and its leave never
/// makes the cluster hold the running node as left.
#[test]
fn a_copy_of_a_running_node_is_refused_loudly_and_never_takes_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["n1", "n2", "n3"]);
    let [n1, n2, n3] = start_three(dir.path(), &certs, ["n1", "n2", "n3"]);
    copy_dir(
        &dir.path().join("data/n2"),
        &dir.path().join("data/n2-copy"),
    );
    let alive_where_it_runs = |agent: &Agent| {
        record_of(agent, "n2")
            .is_some_and(|(addr, status, _)| addr == n2.gossip && status == "alive")
    };

    // At start, through a seed: the copy refuses to run, naming the address.
    let mut copy = launch(
        dir.path(),
        &certs,
        &Spec {
            file: "n2-copy",
            data_dir: Some("n2-copy"),
            ..Spec::new("n2", &[&n1])
        },
    );
    let exit = copy
        .wait_exit(Duration::from_secs(30))
        .expect("the copy stops by itself");
    assert!(!exit.success(), "{exit:?}");
    let printed = copy.log();
    let last_line = printed.lines().last().unwrap_or_default();
    eprintln!("the copy, at start, printed last:\n{last_line}");
    assert!(
        last_line.contains("another process holds this node's identity")
            && last_line.contains(&n2.gossip),
        "{printed}"
    );
    assert!(metric(&n1, "gossip_join_refusals_total{side=\"by_this_node\"}") >= 1.0);
    for agent in [&n1, &n2, &n3] {
        assert!(alive_where_it_runs(agent), "{:?}", members_json(agent));
    }

    // At run time: the copy runs alone (no seeds), and n3 is asked to join
    // it, as an operator's mistake would have it.
    let mut copy = start_spec(
        dir.path(),
        &certs,
        &Spec {
            file: "n2-copy-alone",
            data_dir: Some("n2-copy"),
            ..Spec::new("n2", &[])
        },
    );
    let out = n3.cli(&["join", &copy.gossip]);
    assert!(out.status.success(), "{}", stderr(&out));
    let found_running = |line: &str| {
        line.contains("another process holds this node's identity") && line.contains(&n2.gossip)
    };
    eventually(Duration::from_secs(20), "the copy finds n2 running", || {
        copy.log().lines().any(found_running)
    });
    let copy_log = copy.log();
    let found_line = copy_log
        .lines()
        .find(|l| found_running(l))
        .unwrap_or_default();
    eprintln!("the copy, at run time, printed:\n{found_line}");
    eventually(
        Duration::from_secs(20),
        "n3 reports n2 at two addresses",
        || {
            let log = n3.log();
            log.contains("one identity at two addresses")
                && log.contains(&n2.gossip)
                && log.contains(&copy.gossip)
        },
    );
    let conflict_line = n3
        .log()
        .lines()
        .find(|l| l.contains("one identity at two addresses"))
        .unwrap_or_default()
        .to_string();
    eprintln!("n3, at run time, printed:\n{conflict_line}");
    assert!(
        metric(
            &n3,
            "gossip_identity_conflicts_total{kind=\"member_moved\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &copy,
            "gossip_identity_conflicts_total{kind=\"this_node_answers_elsewhere\"}"
        ) >= 1.0
    );
    assert!(alive_where_it_runs(&n3), "{:?}", members_json(&n3));
    // The copy's writes under n2's identity do not replace n2's own.
    assert!(
        copy.cli(&["kv", "set", "role", "impostor"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_secs(5));
    for agent in [&n1, &n3] {
        assert_eq!(
            stdout(&agent.cli(&["kv", "get", "n2", "role"])).trim(),
            "n2-role"
        );
    }

    // The copy leaves: n2 stays alive where it runs, everywhere.
    copy.signal("TERM");
    assert!(copy.wait_exit(Duration::from_secs(20)).is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for agent in [&n1, &n2, &n3] {
            assert!(alive_where_it_runs(agent), "{:?}", members_json(agent));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A data directory runs one node at a time: a second agent on it stops
/// with an error that says so.
#[test]
fn a_second_agent_on_a_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["n1"]);
    let _n1 = start(dir.path(), &certs, "n1", &[]);
    let mut second = launch(
        dir.path(),
        &certs,
        &Spec {
            file: "n1-again",
            ..Spec::new("n1", &[])
        },
    );
    let exit = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second agent stops by itself");
    assert!(!exit.success(), "{exit:?}");
    assert!(
        second.log().contains("in use by another running node"),
        "{}",
        second.log()
    );
}

/// A node without a data directory, whose earlier life refuted two
/// suspicions (so peers hold it at incarnation 2 or more), comes back at
/// its address from incarnation 0: it rises above its earlier life, and its
/// graceful leave is seen as a leave.
#[test]
fn a_restart_without_a_data_directory_rises_above_its_earlier_life() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["n1", "n2", "n3"]);
    let n1 = start(dir.path(), &certs, "n1", &[]);
    let spec = Spec {
        data_dir: None,
        ..Spec::new("n2", &[&n1])
    };
    let mut n2 = start_spec(dir.path(), &certs, &spec);
    let n3 = start(dir.path(), &certs, "n3", &[&n1]);
    until_alive(&[&n1, &n2, &n3], 3);
    let incarnation = |agent: &Agent| {
        let status: serde_json::Value =
            serde_json::from_str(&stdout(&agent.cli(&["status", "--json"]))).unwrap();
        status["incarnation"].as_u64().unwrap()
    };
    // Paused for less than the shortest suspicion (3 s with the local
    // preset), n2 is suspected but not declared dead, and refutes.
    for _ in 0..10 {
        if incarnation(&n2) >= 2 {
            break;
        }
        n2.signal("STOP");
        std::thread::sleep(Duration::from_millis(2500));
        n2.signal("CONT");
        std::thread::sleep(Duration::from_secs(2));
    }
    let earlier = incarnation(&n2);
    assert!(earlier >= 2, "n2 refuted only {earlier} times");
    eventually(
        Duration::from_secs(20),
        "peers hold the earlier life",
        || {
            [&n1, &n3].iter().all(|a| {
                record_of(a, "n2")
                    .is_some_and(|(_, status, inc)| status == "alive" && inc == earlier)
            })
        },
    );

    // It crashes and comes back at once, with nothing kept.
    n2.signal("KILL");
    assert!(n2.wait_exit(Duration::from_secs(10)).is_some());
    let n2 = start_spec(
        dir.path(),
        &certs,
        &Spec {
            file: "n2-again",
            ports: (spec.ports.0, free_ports().1),
            ..Spec::new("n2", &[&n1])
        }
        .without_data_dir(),
    );
    let started = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the new life rises above the earlier one",
        || incarnation(&n2) > earlier,
    );
    eprintln!(
        "the new life rose above incarnation {earlier} within {:?} of answering",
        started.elapsed()
    );
    eventually(Duration::from_secs(20), "peers hold the new life", || {
        [&n1, &n3].iter().all(|a| {
            record_of(a, "n2").is_some_and(|(_, status, inc)| status == "alive" && inc > earlier)
        })
    });
    let mut n2 = n2;
    n2.signal("TERM");
    assert!(
        n2.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    for agent in [&n1, &n3] {
        eventually(Duration::from_secs(20), "n2 is seen as left", || {
            status_of(agent, "n2").as_deref() == Some("left")
        });
    }
}

/// The admin API with a token refuses requests without it; the CLI sends
/// it; and an agent whose admin API would listen off loopback without a
/// token does not start.
#[test]
fn the_admin_api_needs_its_token_and_never_listens_off_loopback_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["n1"]);
    let agent = launch(
        dir.path(),
        &certs,
        &Spec {
            envs: vec![("GOSSIP_ADMIN_TOKEN", "s3cret".to_string())],
            ..Spec::new("n1", &[])
        },
    );
    eventually(Duration::from_secs(20), "the agent answers", || {
        agent.cli(&["status", "--token", "s3cret"]).status.success()
    });
    let status = |auth: Option<&str>| {
        let mut request = ureq::get(&format!("http://{}/v1/status", agent.admin));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        match request.call() {
            Ok(response) => response.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("Bearer wrong")), 401);
    assert_eq!(status(Some("s3cret")), 401);
    assert_eq!(status(Some("Bearer s3cret")), 200);
    let without = agent.cli(&["status"]);
    assert!(!without.status.success());
    assert!(
        stderr(&without).contains("needs its token"),
        "{}",
        stderr(&without)
    );
    assert!(agent.cli(&["status", "--token", "s3cret"]).status.success());
    let set = agent.cli(&["kv", "set", "color", "blue", "--token", "s3cret"]);
    assert!(set.status.success(), "{}", stderr(&set));

    // Off loopback without a token: refused at start, naming the fix.
    let (gossip, admin) = free_ports();
    let path = dir.path().join("open.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"n1\"\nbind = \"127.0.0.1:{gossip}\"\n[admin]\nbind = \"0.0.0.0:{admin}\"\n[tls]\nca = \"{c}/ca.crt\"\ncert = \"{c}/n1.crt\"\nkey = \"{c}/n1.key\"\n",
            c = certs.display()
        ),
    )
    .unwrap();
    let out = run(&["agent", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("off loopback"), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin.token"), "{}", stderr(&out));
}

#[test]
fn a_node_revoked_in_the_trust_files_is_cut_off_on_reload_and_taken_back_after() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["a", "b", "c"]);
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "# nobody yet\n").unwrap();
    let mut spec = Spec::new("a", &[]);
    spec.envs
        .push(("GOSSIP_TLS_REVOKED", revoked.display().to_string()));
    let a = start_spec(dir.path(), &certs, &spec);
    let b = start(dir.path(), &certs, "b", &[&a]);
    let c = start(dir.path(), &certs, "c", &[&a]);
    until_alive(&[&a, &b, &c], 3);
    let c_id = members_json(&a)
        .iter()
        .find(|m| m["name"] == "c")
        .and_then(|m| m["id"].as_str().map(str::to_string))
        .expect("a knows c's id");

    // SIGHUP: a reads the list again; c is gone from its table at once and
    // stays gone, whatever b and c say of it.
    std::fs::write(&revoked, format!("{c_id}  # decommissioned\n")).unwrap();
    a.signal("HUP");
    eventually(Duration::from_secs(10), "a drops c", || {
        record_of(&a, "c").is_none()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(record_of(&a, "c").is_none(), "c came back while revoked");
    assert_eq!(status_of(&a, "b").as_deref(), Some("alive"));
    assert!(a.log().contains("reloaded the trust bundle"), "{}", a.log());

    // A list that does not parse is refused, and the one in force stays.
    std::fs::write(&revoked, "not an id\n").unwrap();
    let bad = a.cli(&["reload"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("line 1"), "{}", stderr(&bad));

    // Lifted: `gossip-node reload`, and c is a member of a's again.
    std::fs::write(&revoked, "").unwrap();
    let out = a.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 revoked"), "{}", stderr(&out));
    eventually(Duration::from_secs(30), "c is back in a's table", || {
        status_of(&a, "c").as_deref() == Some("alive")
    });
}

/// A network namespace of this test's own, with a hosts file of its own
/// (`ip netns exec` puts `/etc/netns/NAME/hosts` over `/etc/hosts`);
/// removed on drop.
struct Netns {
    name: String,
    hosts: PathBuf,
}

impl Netns {
    /// `None`, saying why, when this process cannot make one (it needs
    /// root and iproute2).
    fn create(tag: &str) -> Option<Netns> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map(|o| stdout(&o));
        let has_ip = Command::new("ip").arg("-V").output().is_ok();
        if uid.as_deref().map(str::trim) != Some("0") || !has_ip {
            eprintln!(
                "skipped: this test needs root and iproute2 to make a network namespace (ip netns); run it as root"
            );
            return None;
        }
        let name = format!("gossip-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let netns = Netns {
            hosts: Path::new("/etc/netns").join(&name).join("hosts"),
            name,
        };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        std::fs::create_dir_all(netns.hosts.parent().unwrap()).unwrap();
        Some(netns)
    }

    /// Rewrites the namespace's hosts file in place (a new file would not
    /// be the one mounted over `/etc/hosts`).
    fn set_hosts(&self, text: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.hosts)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.hosts.parent().unwrap());
    }
}

/// A seed given as a DNS name is resolved again until one answers: the
/// name first points where no agent runs, then at the seed.
#[test]
fn a_seed_named_in_dns_is_resolved_again_until_it_answers() {
    let Some(netns) = Netns::create("dns") else {
        return;
    };
    netns.set_hosts("127.0.0.1 localhost\n127.0.0.2 seed.gossip.test\n");
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["a", "b"]);
    // A namespace of its own: its ports are all free.
    let a = start_spec(
        dir.path(),
        &certs,
        &Spec {
            netns: Some(&netns.name),
            ports: (17946, 17947),
            ..Spec::new("a", &[])
        },
    );
    let b = start_spec(
        dir.path(),
        &certs,
        &Spec {
            netns: Some(&netns.name),
            ports: (17956, 17957),
            seeds: vec!["seed.gossip.test:17946".to_string()],
            ..Spec::new("b", &[])
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        members_json(&b).len(),
        1,
        "b joined through a name that pointed nowhere"
    );
    netns.set_hosts("127.0.0.1 localhost\n127.0.0.1 seed.gossip.test\n");
    let pointed = Instant::now();
    until_alive(&[&a, &b], 2);
    eprintln!(
        "joined {:?} after the name pointed at the seed",
        pointed.elapsed()
    );
}
