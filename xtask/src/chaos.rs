//! `cargo xtask chaos`: real agents, one per network namespace, on a bridge
//! of veth pairs, put through scripted faults with iptables. After each step
//! every running agent's view (read through its admin API, with the CLI run
//! inside its namespace) must converge within a bound, no agent that stayed
//! reachable may be declared dead, and every key written before the faults
//! must be present everywhere.
//!
//! The bridge has no address, so traffic stays between the namespaces.
//! Namespaces, links and processes are removed however the run ends, and
//! leftovers of an interrupted run are removed before a new one.

#![allow(clippy::print_stdout, reason = "the per-step table is the output")]
#![allow(
    clippy::disallowed_methods,
    reason = "real processes under real faults, timed with the wall clock"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agents::{self, wait_until};

const BRIDGE: &str = "gch-br";
const SUBNET: &str = "10.201.0";
const GOSSIP_PORT: u16 = 7946;
const ADMIN: &str = "127.0.0.1:7947";
/// Most namespaces a leftover run can have made.
const MAX_NODES: usize = 64;
/// How long a step may take to converge once its fault is in place (the
/// `lan` preset declares a death in about 8 s; a healed member is retried
/// every 10 s).
const BOUND: Duration = Duration::from_secs(45);

/// The agents every agent names as its seeds.
const SEEDS: [usize; 3] = [0, 1, 2];

fn namespace(i: usize) -> String {
    format!("gch-ns{i}")
}

fn address(i: usize) -> String {
    format!("{SUBNET}.{}", i + 1)
}

fn name(i: usize) -> String {
    format!("node-{}", i + 1)
}

fn ip(args: &[&str]) -> Result<()> {
    agents::output(Command::new("ip").args(args)).map(drop)
}

/// A command run inside namespace `i`.
fn in_namespace(i: usize, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &namespace(i), program]);
    command
}

/// Removes every namespace and link a run may have left.
fn teardown() {
    for i in 0..MAX_NODES {
        let _ = Command::new("ip")
            .args(["netns", "delete", &namespace(i)])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &format!("gch-h{i}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

/// Why this machine cannot run the chaos cluster, if it cannot.
fn unavailable() -> Option<String> {
    let uid = agents::output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        return Some("it needs root (network namespaces, veth pairs and iptables); run it as root, or in CI, which runs it when it can".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    let probe = namespace(MAX_NODES - 1);
    if agents::output(Command::new("ip").args(["netns", "add", &probe])).is_err() {
        return Some(
            "this machine does not allow network namespaces (`ip netns add` failed)".into(),
        );
    }
    let _ = Command::new("ip")
        .args(["netns", "delete", &probe])
        .status();
    if Command::new("iptables").arg("--version").output().is_err() {
        eprintln!("chaos: iptables not found; installing it with apt-get");
        let installed = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "iptables"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Some("iptables is not installed and apt-get could not install it".into());
        }
    }
    None
}

/// The namespaces, the agents in them, and their files; all removed on drop.
struct Lab {
    nodes: usize,
    bin: PathBuf,
    dir: PathBuf,
    agents: Vec<Option<Child>>,
    /// Which agents have ever been started: one never started is absent
    /// from every view, not dead.
    started: Vec<bool>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn build(nodes: usize, bin: PathBuf) -> Result<Lab> {
        teardown();
        let dir = std::env::temp_dir().join(format!("gossip-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let lab = Lab {
            nodes,
            bin,
            dir,
            agents: (0..nodes).map(|_| None).collect(),
            started: vec![false; nodes],
        };
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 0..nodes {
            let (ns, host, inner) = (namespace(i), format!("gch-h{i}"), format!("gch-n{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", BRIDGE])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", address(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        let names: Vec<String> = (0..nodes).map(name).collect();
        agents::make_certs(&lab.bin, &lab.dir.join("certs"), "chaos", &names)?;
        Ok(lab)
    }

    /// Starts (or restarts, with the same data directory) agent `i`, whose
    /// seeds are the first three agents (its own address left out).
    fn start(&mut self, i: usize) -> Result<()> {
        let seeds = SEEDS
            .iter()
            .filter(|&&seed| seed != i)
            .map(|&seed| format!("\"{}:{GOSSIP_PORT}\"", address(seed)))
            .collect::<Vec<_>>()
            .join(", ");
        let dir = self.dir.display();
        let config = format!(
            "cluster = \"chaos\"\nname = \"{name}\"\nbind = \"{addr}:{GOSSIP_PORT}\"\nseeds = [{seeds}]\npreset = \"lan\"\ndata_dir = \"{dir}/data/{name}\"\n[tls]\nca = \"{dir}/certs/ca.crt\"\ncert = \"{dir}/certs/{name}.crt\"\nkey = \"{dir}/certs/{name}.key\"\n[admin]\nbind = \"{ADMIN}\"\n",
            name = name(i),
            addr = address(i),
        );
        let path = self.dir.join(format!("{}.toml", name(i)));
        std::fs::write(&path, config)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", name(i))))?;
        let bin = self.bin.to_str().context("a UTF-8 path")?;
        let child = in_namespace(i, bin)
            .args(["agent", "--config", path.to_str().context("a UTF-8 path")?])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start an agent")?;
        self.agents[i] = Some(child);
        self.started[i] = true;
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes)
            .filter(|i| self.agents[*i].is_some())
            .collect()
    }

    fn cli(&self, i: usize, args: &[&str]) -> Result<String> {
        let bin = self.bin.to_str().context("a UTF-8 path")?;
        agents::output(in_namespace(i, bin).args(args).args(["--admin", ADMIN]))
    }

    /// How agent `i` sees every member: name -> status.
    fn view(&self, i: usize) -> BTreeMap<String, String> {
        self.cli(i, &["members", "--json"])
            .map(|json| agents::parse_view(&json))
            .unwrap_or_default()
    }

    fn has_key(&self, i: usize, owner: usize) -> bool {
        self.cli(i, &["kv", "get", &name(owner), "chaos"])
            .is_ok_and(|v| v.trim() == format!("written by {}", name(owner)))
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        agents::output(in_namespace(i, "iptables").args(args)).map(drop)
    }

    /// Drops what `to` receives from `from` (all of it, or `probability`).
    fn drop_link(&self, from: usize, to: usize, probability: Option<f64>) -> Result<()> {
        let source = address(from);
        let mut args = vec!["-A", "INPUT", "-s", source.as_str()];
        let p;
        if let Some(probability) = probability {
            p = probability.to_string();
            args.extend(["-m", "statistic", "--mode", "random", "--probability", &p]);
        }
        args.extend(["-j", "DROP"]);
        self.iptables(to, &args)
    }

    fn heal(&self) -> Result<()> {
        for i in 0..self.nodes {
            self.iptables(i, &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

/// What a step expects: whether `observer` can reach `subject`.
type Reachable<'a> = &'a dyn Fn(usize, usize) -> bool;

/// One row of the table.
struct Row {
    step: String,
    converged: Option<Duration>,
    false_deaths: Vec<String>,
    /// Whether every agent held every key written before the faults (not
    /// checked before they are written).
    keys_ok: Option<bool>,
}

/// Holds the fault for `hold`, then waits for every running agent to see
/// every reachable running member alive and every other member dead,
/// watching throughout for deaths of reachable members.
fn observe(
    lab: &Lab,
    step: &str,
    hold: Duration,
    reachable: Reachable<'_>,
    check_keys: bool,
) -> Row {
    let running = lab.running();
    // Deaths already known when the step starts (a crash or partition of
    // the step before) are not this step's doing.
    let known: BTreeMap<usize, BTreeMap<String, String>> =
        running.iter().map(|&i| (i, lab.view(i))).collect();
    let was_dead = |i: usize, j: usize| known[&i].get(&name(j)).is_some_and(|s| s == "dead");
    let mut false_deaths = Vec::new();
    let watch = |false_deaths: &mut Vec<String>| -> bool {
        let mut converged = true;
        for &i in &running {
            let view = lab.view(i);
            for j in 0..lab.nodes {
                let status = view.get(&name(j)).map_or("absent", String::as_str);
                let up = lab.agents[j].is_some() && reachable(i, j);
                if up && status == "dead" && !was_dead(i, j) {
                    let death = format!("{} declared {} dead", name(i), name(j));
                    if !false_deaths.contains(&death) {
                        false_deaths.push(death);
                    }
                }
                let expected = match (up, lab.started[j]) {
                    (true, _) => "alive",
                    (false, true) => "dead",
                    (false, false) => "absent",
                };
                converged &= status == expected;
            }
        }
        converged
    };
    let start = Instant::now();
    while start.elapsed() < hold {
        watch(&mut false_deaths);
        std::thread::sleep(Duration::from_millis(500));
    }
    let settle = Instant::now();
    let converged = wait_until(BOUND, || watch(&mut false_deaths)).map(|_| settle.elapsed());
    let missing = || -> Vec<String> {
        running
            .iter()
            .flat_map(|&i| (0..lab.nodes).map(move |owner| (i, owner)))
            .filter(|&(i, owner)| check_keys && !lab.has_key(i, owner))
            .map(|(i, owner)| format!("{} lacks {}'s key", name(i), name(owner)))
            .collect()
    };
    // Keys travel by rumor and anti-entropy, not with the membership: give
    // them the same bound.
    if check_keys {
        wait_until(BOUND, || missing().is_empty());
    }
    let missing = missing();
    for gap in &missing {
        eprintln!("chaos: {step}: {gap}");
    }
    let keys_ok = check_keys.then_some(missing.is_empty());
    let row = Row {
        step: step.to_string(),
        converged,
        false_deaths,
        keys_ok,
    };
    eprintln!(
        "chaos: {step}: {}",
        row.converged.map_or("did not converge".to_string(), |d| {
            format!("converged {:.1} s after the hold", d.as_secs_f64())
        })
    );
    row
}

pub(crate) fn run(root: &Path, nodes: usize) -> Result<()> {
    if nodes < 8 {
        bail!("the chaos cluster runs at least 8 agents");
    }
    if let Some(why) = unavailable() {
        println!("chaos: skipped: {why}.");
        return Ok(());
    }
    let bin = agents::build_binary(root)?;
    let mut lab = Lab::build(nodes, bin)?;
    println!(
        "==> {nodes} agents in namespaces gch-ns0..{}, on {SUBNET}.0/24",
        nodes - 1
    );
    // One of the three seeds is down while the others start.
    let late_seed = SEEDS[1];
    for i in (0..nodes).filter(|&i| i != late_seed) {
        lab.start(i)?;
    }
    let all = |_: usize, _: usize| true;
    let mut rows = vec![observe(
        &lab,
        &format!("start: three seeds, {} down", name(late_seed)),
        Duration::ZERO,
        &all,
        false,
    )];
    lab.start(late_seed)?;
    rows.push(observe(
        &lab,
        &format!("the seed {} starts", name(late_seed)),
        Duration::ZERO,
        &all,
        false,
    ));
    if rows.iter().any(|row| row.converged.is_none()) {
        print_table(&rows);
        bail!(
            "the agents did not converge; their logs are in {}",
            lab.dir.display()
        );
    }
    for i in 0..nodes {
        lab.cli(
            i,
            &["kv", "set", "chaos", &format!("written by {}", name(i))],
        )?;
    }
    let keys = observe(
        &lab,
        "keys written on every agent",
        Duration::ZERO,
        &all,
        true,
    );
    rows.push(keys);

    // 10% random loss on a ring of links, both ways.
    for i in 0..nodes {
        let next = (i + 1) % nodes;
        lab.drop_link(i, next, Some(0.1))?;
        lab.drop_link(next, i, Some(0.1))?;
    }
    rows.push(observe(
        &lab,
        "10% loss on the ring of links, 30 s",
        Duration::from_secs(30),
        &all,
        true,
    ));
    lab.heal()?;

    // Two halves that cannot hear each other.
    let half = nodes / 2;
    for i in 0..half {
        for j in half..nodes {
            lab.drop_link(i, j, None)?;
            lab.drop_link(j, i, None)?;
        }
    }
    let same_half = move |i: usize, j: usize| (i < half) == (j < half);
    rows.push(observe(
        &lab,
        "partition into two halves",
        Duration::from_secs(5),
        &same_half,
        true,
    ));
    lab.heal()?;
    rows.push(observe(&lab, "heal", Duration::ZERO, &all, true));

    let victim = nodes - 1;
    lab.crash(victim);
    rows.push(observe(
        &lab,
        &format!("crash {} (SIGKILL)", name(victim)),
        Duration::ZERO,
        &all,
        true,
    ));
    lab.start(victim)?;
    rows.push(observe(
        &lab,
        &format!("restart {} (same data directory)", name(victim)),
        Duration::ZERO,
        &all,
        true,
    ));

    // node-2 hears nothing from node-3; node-3 hears node-2.
    lab.drop_link(2, 1, None)?;
    rows.push(observe(
        &lab,
        "one-way partition: node-2 deaf to node-3, 30 s",
        Duration::from_secs(30),
        &all,
        true,
    ));
    lab.heal()?;
    rows.push(observe(&lab, "heal", Duration::ZERO, &all, true));

    print_table(&rows);
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.converged.is_none() || !r.false_deaths.is_empty() || r.keys_ok == Some(false))
        .collect();
    if !failed.is_empty() {
        for row in &failed {
            for death in &row.false_deaths {
                eprintln!("chaos: {}: false death: {death}", row.step);
            }
        }
        bail!(
            "{} step(s) failed; the agents' logs are in {} until this exits",
            failed.len(),
            lab.dir.display()
        );
    }
    println!("chaos: every step converged with no false death and every key everywhere");
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<48} {:>12} {:>12} {:>6}",
        "step", "converged", "false deaths", "keys"
    );
    for row in rows {
        println!(
            "{:<48} {:>12} {:>12} {:>6}",
            row.step,
            row.converged
                .map_or("NO".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            row.false_deaths.len(),
            match row.keys_ok {
                None => "-",
                Some(true) => "all",
                Some(false) => "MISSING",
            }
        );
    }
    println!(
        "(converged: after the step's hold, until every running agent saw every reachable agent alive, every other dead and none it never met; keys: then, every agent holds every key written, within the same bound; bound {} s)",
        BOUND.as_secs()
    );
}
