//! The subcommands that talk to a running agent over its admin API.

use std::net::SocketAddr;

use crate::admin::{ErrorJson, KeyJson, MemberJson, RingMemberJson, StatusJson};
use crate::config::DEFAULT_ADMIN;
use anyhow::{Context, Result, bail};
use gossip_node::Seed;

/// Which agent a command talks to, and how.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The agent's admin API address.
    #[arg(long, env = "GOSSIP_ADMIN", hide_env_values = true, default_value = DEFAULT_ADMIN, global = true)]
    pub(crate) admin: SocketAddr,
    /// The admin API's bearer token, if the agent has one.
    #[arg(
        long,
        env = "GOSSIP_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub(crate) token: Option<String>,
}

fn url(admin: SocketAddr, path: &str) -> String {
    format!("http://{admin}{path}")
}

/// Turns an HTTP failure into an error that says what to check.
fn failed(admin: SocketAddr, err: ureq::Error) -> anyhow::Error {
    match err {
        ureq::Error::StatusCode(code) => anyhow::anyhow!("the agent at {admin} answered {code}"),
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            anyhow::anyhow!(
                "no agent answers at {admin}: is `gossip-node agent` running, and is its admin API there? (--admin or GOSSIP_ADMIN)"
            )
        }
        other => anyhow::anyhow!("talking to the agent at {admin}: {other}"),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into()
}

/// GET `path`, decoding JSON, or the agent's error message.
fn get_json<T: serde::de::DeserializeOwned>(target: &Target, path: &str) -> Result<T> {
    let body = send(target, "GET", path, None)?;
    serde_json::from_str(&body).context("the agent's answer is not the expected JSON")
}

/// Sends a request, with the token if there is one; the body of a success,
/// or the agent's error message.
fn send(target: &Target, method: &str, path: &str, body: Option<&str>) -> Result<String> {
    let agent = agent();
    let url = url(target.admin, path);
    let token = target.token.as_deref();
    let result = match (method, body) {
        ("PUT", Some(body)) => with_token(agent.put(&url), token).send(body),
        ("POST", Some(body)) => with_token(agent.post(&url), token).send(body),
        ("POST", None) => with_token(agent.post(&url), token).send_empty(),
        ("DELETE", _) => with_token(agent.delete(&url), token).call(),
        _ => with_token(agent.get(&url), token).call(),
    };
    let mut response = result.map_err(|e| failed(target.admin, e))?;
    let ok = response.status().is_success();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| failed(target.admin, e))?;
    if !ok {
        let message = serde_json::from_str::<ErrorJson>(&body).map_or(body, |e| e.error);
        bail!("{message}");
    }
    Ok(body)
}

fn with_token<B>(request: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(token) => request.header("Authorization", &format!("Bearer {token}")),
        None => request,
    }
}

/// The members table, aligned like `serf members`, or JSON.
pub(crate) fn members(target: &Target, json: bool) -> Result<()> {
    let members: Vec<MemberJson> = get_json(target, "/v1/members")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    print!("{}", members_table(&members));
    Ok(())
}

/// The table `members` prints.
pub(crate) fn members_table(members: &[MemberJson]) -> String {
    let mut sorted: Vec<&MemberJson> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = sorted.into_iter().map(|m| {
        vec![
            m.name.clone(),
            m.addr.map_or_else(|| "-".into(), |a| a.to_string()),
            m.status.clone(),
            m.incarnation.to_string(),
            m.id.chars().take(12).collect(),
        ]
    });
    table(&["Node", "Address", "Status", "Incarnation", "Id"], rows)
}

/// The token ring as the local agent sees it: each member's ring status,
/// load, tokens and share of the ring, or JSON.
pub(crate) fn ring(target: &Target, json: bool) -> Result<()> {
    let ring: Vec<RingMemberJson> = get_json(target, "/v1/ring")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ring)?);
        return Ok(());
    }
    let rows = ring.iter().map(|m| {
        vec![
            m.name.clone(),
            m.status.clone(),
            m.ring_status.clone().unwrap_or_else(|| "-".into()),
            m.load.map_or_else(|| "-".into(), |l| l.to_string()),
            m.tokens.to_string(),
            format!("{:.1}%", m.owns * 100.0),
        ]
    });
    print!(
        "{}",
        table(&["Node", "Status", "Ring", "Load", "Tokens", "Owns"], rows)
    );
    Ok(())
}

/// `header` and `rows`, each column as wide as its widest cell.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut rows: Vec<Vec<String>> =
        std::iter::once(header.iter().map(|h| h.to_string()).collect())
            .chain(rows)
            .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows.drain(..) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn status(target: &Target, json: bool) -> Result<()> {
    let status: StatusJson = get_json(target, "/v1/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("node         {} ({})", status.name, &status.id[..12]);
    println!("address      {}", status.addr);
    println!("cluster      {}", status.cluster);
    println!(
        "members      {} alive, {} suspect, {} dead, {} left",
        status.alive, status.suspect, status.dead, status.left
    );
    println!("incarnation  {}", status.incarnation);
    println!("health       {} (0 is healthy)", status.local_health);
    println!(
        "input lag    {} ms (how late the latest frame was handled)",
        status.input_lag_ms
    );
    println!("uptime       {} s", status.uptime_s);
    for warning in &status.warnings {
        println!("warning      {warning}");
    }
    Ok(())
}

pub(crate) fn kv_get(target: &Target, node: &str, key: Option<&str>, json: bool) -> Result<()> {
    match key {
        Some(key) => {
            let found: KeyJson = get_json(target, &format!("/v1/kv/{node}/{key}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                println!("{}", found.value);
            }
        }
        None => {
            let keys: Vec<KeyJson> = get_json(target, &format!("/v1/kv/{node}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                for k in keys {
                    println!("{}={}", k.key, k.value);
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn kv_set(target: &Target, key: &str, value: &str) -> Result<()> {
    send(target, "PUT", &format!("/v1/local/kv/{key}"), Some(value))?;
    Ok(())
}

pub(crate) fn kv_del(target: &Target, key: &str) -> Result<()> {
    send(target, "DELETE", &format!("/v1/local/kv/{key}"), None)?;
    Ok(())
}

pub(crate) fn join(target: &Target, seeds: &[Seed]) -> Result<()> {
    let body = serde_json::json!({ "seeds": seeds }).to_string();
    send(target, "POST", "/v1/join", Some(&body))?;
    let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
    eprintln!(
        "the agent at {} joined through {}",
        target.admin,
        seeds.join(", ")
    );
    Ok(())
}

pub(crate) fn reload(target: &Target) -> Result<()> {
    let body = send(target, "POST", "/v1/reload", None)?;
    let revoked = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["revoked"].as_u64())
        .unwrap_or_default();
    eprintln!(
        "the agent at {} reloaded its trust bundle ({revoked} revoked node(s))",
        target.admin
    );
    Ok(())
}

pub(crate) fn leave(target: &Target) -> Result<()> {
    send(target, "POST", "/v1/leave", None)?;
    eprintln!(
        "the agent at {} is leaving the cluster and will exit",
        target.admin
    );
    Ok(())
}
