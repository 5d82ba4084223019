//! `cargo xtask demo`: five agents on loopback, a frozen agent that comes
//! back, a killed one, a key spreading, and a clean exit, narrated.

#![allow(clippy::print_stdout, reason = "the demo's narration is its output")]
#![allow(
    clippy::disallowed_methods,
    reason = "the demo runs real processes and times them with the wall clock"
)]

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agents::{self, wait_until};

const NODES: usize = 5;

/// The agents, stopped (and the temporary folder removed) however the demo
/// ends.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    agents: Vec<Option<Child>>,
    admins: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn name(i: usize) -> String {
    format!("node-{}", i + 1)
}

impl Cluster {
    fn cli(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--admin", &self.admins[i]])
            .output()
            .context("cannot run gossip-node")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How node `i` sees every member: name -> status.
    fn view(&self, i: usize) -> BTreeMap<String, String> {
        self.cli(i, &["members", "--json"])
            .map(|json| agents::parse_view(&json))
            .unwrap_or_default()
    }

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.agents.len()).filter(|i| self.agents[*i].is_some())
    }
}

fn free_port_pair() -> Result<(u16, u16)> {
    let udp = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let tcp = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok((udp, tcp))
}

pub(crate) fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    println!("==> building the gossip-node binary");
    let bin = agents::build_binary(root)?;
    let dir = std::env::temp_dir().join(format!("gossip-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cluster = Cluster {
        dir: dir.clone(),
        bin: bin.clone(),
        agents: Vec::new(),
        admins: Vec::new(),
    };
    let demo_started = Instant::now();

    println!(
        "==> making a cluster CA and {NODES} node certificates in {}",
        dir.display()
    );
    let names: Vec<String> = (0..NODES).map(name).collect();
    agents::make_certs(&bin, &dir.join("certs"), "demo", &names)?;

    println!(
        "==> starting {NODES} agents on loopback; each names node-1, node-2 and node-3 as seeds"
    );
    // Every agent's ports are known before the first starts (they name each
    // other as seeds); the OS may hand a released port out again, so a
    // repeat is drawn again.
    let mut ports: Vec<(u16, u16)> = Vec::with_capacity(NODES);
    while ports.len() < NODES {
        let pair = free_port_pair()?;
        if !ports.iter().any(|&(g, a)| g == pair.0 || a == pair.1) {
            ports.push(pair);
        }
    }
    for (i, &(gossip, admin)) in ports.iter().enumerate() {
        // Three seeds, as the agent advises: its own address left out.
        let seeds = (0..3)
            .filter(|&seed| seed != i)
            .map(|seed| format!("\"127.0.0.1:{}\"", ports[seed].0))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "cluster = \"demo\"\nname = \"{name}\"\nbind = \"127.0.0.1:{gossip}\"\nseeds = [{seeds}]\ndata_dir = \"data/{name}\"\n[tls]\nca = \"certs/ca.crt\"\ncert = \"certs/{name}.crt\"\nkey = \"certs/{name}.key\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n",
            name = name(i)
        );
        let path = dir.join(format!("{}.toml", name(i)));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join(format!("{}.log", name(i))))?;
        let child = Command::new(&bin)
            .args(["agent", "--config", path.to_str().context("a UTF-8 path")?])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start an agent")?;
        cluster.agents.push(Some(child));
        cluster.admins.push(format!("127.0.0.1:{admin}"));
    }

    // Converge, printing node-1's table whenever it changes.
    let mut last = String::new();
    let converged = wait_until(Duration::from_secs(20), || {
        if let Ok(table) = cluster.cli(0, &["members"])
            && table != last
        {
            println!(
                "\n$ gossip-node members    (node-1's view, {:.1} s)",
                demo_started.elapsed().as_secs_f64()
            );
            print!("{table}");
            last = table;
        }
        (0..NODES).all(|i| {
            let view = cluster.view(i);
            view.len() == NODES && view.values().all(|s| s == "alive")
        })
    })
    .context("the agents did not converge in 20 s; see their logs")?;
    println!(
        "\n==> every agent sees all {NODES} alive ({:.1} s after start)",
        converged.as_secs_f64()
    );

    // Freeze node-4 for five seconds: stalled, its port still open.
    let frozen = NODES - 2;
    let pid = cluster.agents[frozen]
        .as_ref()
        .map(Child::id)
        .context("the agent to freeze runs")?;
    println!(
        "\n==> freezing {} with SIGSTOP for 5 s: a stalled process (its port still open), which the",
        name(frozen)
    );
    println!("    lan preset's patience (6 s) promises never to declare dead");
    signal(pid, "STOP")?;
    let freeze = Instant::now();
    let watchers: Vec<usize> = cluster.running().filter(|&i| i != frozen).collect();
    let mut frozen_seen: BTreeMap<usize, String> = BTreeMap::new();
    let mut declared_dead = Vec::new();
    let mut watch_frozen = |cluster: &Cluster| {
        for &i in &watchers {
            let status = cluster
                .view(i)
                .get(&name(frozen))
                .cloned()
                .unwrap_or_default();
            if !status.is_empty() && frozen_seen.get(&i) != Some(&status) {
                println!(
                    "    {:.1} s  {} holds {} {status}",
                    freeze.elapsed().as_secs_f64(),
                    name(i),
                    name(frozen)
                );
                if status == "dead" {
                    declared_dead.push(i);
                }
                frozen_seen.insert(i, status);
            }
        }
    };
    wait_until(Duration::from_secs(5), || {
        watch_frozen(&cluster);
        false
    });
    signal(pid, "CONT")?;
    println!(
        "    {:.1} s  {} resumes (SIGCONT)",
        freeze.elapsed().as_secs_f64(),
        name(frozen)
    );
    let refuted = wait_until(Duration::from_secs(15), || {
        watch_frozen(&cluster);
        watchers
            .iter()
            .all(|&i| cluster.view(i).get(&name(frozen)).map(String::as_str) == Some("alive"))
    });
    if !declared_dead.is_empty() {
        bail!("a member frozen for 5 s was declared dead: the patience rule is broken");
    }
    let back = refuted.context("the frozen agent was not alive everywhere 15 s after SIGCONT")?;
    println!(
        "    {} refuted the suspicion: alive everywhere again {:.1} s after it resumed, never declared dead",
        name(frozen),
        back.as_secs_f64()
    );

    // Kill node-5 without goodbye: its host answers for it.
    let victim = NODES - 1;
    println!(
        "\n==> killing {} with SIGKILL: no goodbye, and the host answers datagrams to its port",
        name(victim)
    );
    println!("    with ICMP port unreachable, evidence the process is gone");
    if let Some(mut child) = cluster.agents[victim].take() {
        child.kill()?;
        child.wait()?;
    }
    let crash = Instant::now();
    let mut suspected: BTreeMap<usize, f64> = BTreeMap::new();
    let mut dead: BTreeMap<usize, f64> = BTreeMap::new();
    let survivors: Vec<usize> = cluster.running().collect();
    wait_until(Duration::from_secs(40), || {
        for &i in &survivors {
            let status = cluster
                .view(i)
                .get(&name(victim))
                .cloned()
                .unwrap_or_default();
            let at = crash.elapsed().as_secs_f64();
            if (status == "suspect" || status == "dead") && !suspected.contains_key(&i) {
                suspected.insert(i, at);
                println!("    {:.1} s  {} suspects {}", at, name(i), name(victim));
            }
            if status == "dead" && !dead.contains_key(&i) {
                dead.insert(i, at);
                println!(
                    "    {:.1} s  {} declares {} dead",
                    at,
                    name(i),
                    name(victim)
                );
            }
        }
        dead.len() == survivors.len()
    })
    .context("not every survivor declared the crashed node dead in 40 s")?;
    println!("\n$ gossip-node members    (node-1's view)");
    print!("{}", cluster.cli(0, &["members"])?);

    // A key set on node-2 reaches everyone.
    println!("\n==> $ gossip-node kv set greeting 'hello from node-2'    (on node-2)");
    cluster.cli(1, &["kv", "set", "greeting", "hello from node-2"])?;
    let set_at = Instant::now();
    let mut seen: BTreeMap<usize, f64> = BTreeMap::new();
    wait_until(Duration::from_secs(20), || {
        for &i in &survivors {
            if !seen.contains_key(&i)
                && cluster
                    .cli(i, &["kv", "get", "node-2", "greeting"])
                    .is_ok_and(|v| v.trim() == "hello from node-2")
            {
                let at = set_at.elapsed().as_secs_f64() * 1000.0;
                seen.insert(i, at);
                println!(
                    "    {at:>5.0} ms  {} reads greeting = hello from node-2",
                    name(i)
                );
            }
        }
        seen.len() == survivors.len()
    })
    .context("the key did not reach every agent in 20 s")?;

    // Stop everything gracefully.
    println!("\n==> stopping the agents with SIGTERM (each leaves the cluster, then exits)");
    for i in survivors.iter().rev() {
        if let Some(child) = &cluster.agents[*i] {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }
    for slot in &mut cluster.agents {
        if let Some(mut child) = slot.take() {
            let exited = wait_until(Duration::from_secs(20), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    drop(cluster);

    let worst_dead = dead.values().copied().fold(0.0, f64::max);
    let worst_key = seen.values().copied().fold(0.0, f64::max);
    println!(
        "\nWhat you saw ({:.0} s in all, {:.0} s after the build):",
        started.elapsed().as_secs_f64(),
        demo_started.elapsed().as_secs_f64()
    );
    println!(
        "  * {NODES} agents, each with its own certificate from one cluster CA, joined through three seeds"
    );
    println!(
        "    and agreed on the membership in {:.1} s;",
        converged.as_secs_f64()
    );
    println!(
        "  * a node frozen for 5 s was suspected, refuted the suspicion when it woke, and was never declared dead;"
    );
    println!(
        "  * a node killed without a word was declared dead by every survivor within {worst_dead:.1} s, on its host's"
    );
    println!(
        "    ICMP port unreachable (a lost host, which answers nothing, takes the 6 s patience more);"
    );
    println!("  * a key set on one node reached every other in {worst_key:.0} ms;");
    println!("  * everything stopped and the temporary folder is gone.");
    println!("\nWhat to try next (the binary is target/debug/gossip-node):");
    println!(
        "  * gossip-node certs init-ca --dir certs && gossip-node certs issue --ca-dir certs --name node-1 --out certs"
    );
    println!(
        "  * gossip-node agent --config gossip-node/examples/agent.toml  (every key commented)"
    );
    println!("  * gossip-node members | status | kv get NODE [KEY] | kv set KEY VALUE | leave");
    println!("  * curl 127.0.0.1:7947/metrics   and the JSON API in the README");
    println!("  * cargo run -p gossip-node --example hash_ring   (the library, in-process)");
    println!("  * cargo xtask bench cluster --nodes 64   (join, detection and cost figures)");
    Ok(())
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}
