//! Seeds as operators name them: addresses, DNS names, SRV records; and
//! their resolution, again and again, as a Kubernetes headless service or
//! any configuration service needs.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::driver::{Command, JoinState};
use crate::error::Error;

/// How often seed names are resolved again while the node has not joined.
pub(crate) const RESOLVE_WHILE_JOINING: Duration = Duration::from_secs(2);
/// How often seed names are resolved again once the node has joined.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// Longest one resolution of all the seeds may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A member to join through, as the operator names it. Parsed from
/// `ip:port`, `host:port` or `srv:NAME`:
///
/// ```
/// use gossip_node::Seed;
/// let seeds: Vec<Seed> = ["10.0.0.5:7946", "gossip-0.gossip:7946", "srv:_gossip._udp.gossip.default.svc.cluster.local"]
///     .iter()
///     .map(|s| s.parse())
///     .collect::<Result<_, _>>()?;
/// assert!(matches!(seeds[0], Seed::Addr(_)));
/// assert_eq!(seeds[1].to_string(), "gossip-0.gossip:7946");
/// # Ok::<(), gossip_node::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seed {
    /// An address.
    Addr(SocketAddr),
    /// A DNS name and a port: every address the name resolves to (its A and
    /// AAAA records, and `/etc/hosts`, as the system resolves names).
    Host {
        /// The name.
        name: String,
        /// The port.
        port: u16,
    },
    /// The name of DNS SRV records (as a Kubernetes headless service
    /// publishes for a named port): every target they list, at its port.
    /// Resolved with the system's DNS servers (`/etc/resolv.conf`).
    Srv(String),
}

impl Seed {
    /// `true` if the seed names something DNS resolves.
    pub fn is_name(&self) -> bool {
        !matches!(self, Seed::Addr(_))
    }
}

impl From<SocketAddr> for Seed {
    fn from(addr: SocketAddr) -> Self {
        Seed::Addr(addr)
    }
}

impl FromStr for Seed {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("srv:") {
            if name.is_empty() {
                return Err(Error::Config("`srv:` names no SRV record".into()));
            }
            return Ok(Seed::Srv(name.to_string()));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Seed::Addr(addr));
        }
        match text.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && !name.contains(':') => {
                let port = port.parse().map_err(|_| {
                    Error::Config(format!("seed `{text}`: `{port}` is not a port number"))
                })?;
                Ok(Seed::Host {
                    name: name.to_string(),
                    port,
                })
            }
            _ => Err(Error::Config(format!(
                "seed `{text}`: give `ip:port`, `host:port` or `srv:NAME`"
            ))),
        }
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Addr(addr) => write!(f, "{addr}"),
            Seed::Host { name, port } => write!(f, "{name}:{port}"),
            Seed::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// Written as the text it parses from.
impl serde::Serialize for Seed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Seed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What resolving a list of seeds gave.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Every address, in the seeds' order, without repeats.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The seeds that did not resolve, with why.
    pub(crate) failures: Vec<(Seed, String)>,
}

/// Resolves seeds. Holds the DNS client for SRV records, built on first use
/// from the system's configuration.
#[derive(Default)]
pub(crate) struct SeedResolver {
    dns: Option<TokioResolver>,
}

impl SeedResolver {
    /// A resolver that asks `server` for SRV records (for tests).
    #[cfg(test)]
    fn with_server(server: SocketAddr) -> Self {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        use hickory_resolver::proto::xfer::Protocol;
        let mut config = ResolverConfig::new();
        config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
        let dns =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build();
        SeedResolver { dns: Some(dns) }
    }

    /// Every address `seeds` stand for now, within a few seconds.
    pub(crate) async fn resolve(&mut self, seeds: &[Seed]) -> Resolved {
        let mut resolved = Resolved::default();
        for seed in seeds {
            let found = tokio::time::timeout(RESOLVE_TIMEOUT, self.resolve_one(seed))
                .await
                .unwrap_or_else(|_| Err("no answer within 5 s".to_string()));
            match found {
                Ok(addrs) if addrs.is_empty() => resolved
                    .failures
                    .push((seed.clone(), "no address".to_string())),
                Ok(addrs) => {
                    for addr in addrs {
                        if !resolved.addrs.contains(&addr) {
                            resolved.addrs.push(addr);
                        }
                    }
                }
                Err(why) => resolved.failures.push((seed.clone(), why)),
            }
        }
        resolved
    }

    async fn resolve_one(&mut self, seed: &Seed) -> Result<Vec<SocketAddr>, String> {
        match seed {
            Seed::Addr(addr) => Ok(vec![*addr]),
            Seed::Host { name, port } => lookup_host(name, *port).await,
            Seed::Srv(name) => {
                if self.dns.is_none() {
                    let builder = TokioResolver::builder_tokio()
                        .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?;
                    self.dns = Some(builder.build());
                }
                let dns = self.dns.as_ref().expect("built above");
                let records = dns
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut addrs = Vec::new();
                for record in records.iter() {
                    let target = record.target().to_utf8();
                    let target = target.trim_end_matches('.');
                    match lookup_host(target, record.port()).await {
                        Ok(found) => addrs.extend(found),
                        Err(why) => debug!(%target, %why, "an SRV target did not resolve"),
                    }
                }
                Ok(addrs)
            }
        }
    }
}

async fn lookup_host(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    tokio::net::lookup_host((name, port))
        .await
        .map(Iterator::collect)
        .map_err(|e| e.to_string())
}

/// `addrs` without any of `own` (this node's addresses are never a seed).
pub(crate) fn other_than(mut addrs: Vec<SocketAddr>, own: &[SocketAddr]) -> Vec<SocketAddr> {
    addrs.retain(|addr| !own.contains(addr));
    addrs
}

/// Where to join through now: `seeds` resolved (failures logged), `own`
/// left out. `None` if there is nowhere to join through, now or later: no
/// other address and no name that may resolve later.
pub(crate) async fn join_addresses(seeds: &[Seed], own: &[SocketAddr]) -> Option<Vec<SocketAddr>> {
    let resolved = SeedResolver::default().resolve(seeds).await;
    report_failures(&resolved);
    let addrs = other_than(resolved.addrs, own);
    (!addrs.is_empty() || seeds.iter().any(Seed::is_name)).then_some(addrs)
}

/// Logs the seeds that did not resolve, naming what to check.
pub(crate) fn report_failures(resolved: &Resolved) {
    for (seed, why) in &resolved.failures {
        warn!(%seed, %why, "a seed did not resolve; check the name, the DNS service and /etc/resolv.conf; trying again");
    }
}

/// The task that resolves the driver's seed names again: every
/// [`RESOLVE_WHILE_JOINING`] until the node has joined, then every
/// [`RESOLVE_EVERY`], and at once when the seeds change. Ends with the
/// driver; holds no handle that would keep the driver running (the driver
/// stops when the last [`Node`](crate::Node) handle is dropped).
pub(crate) async fn keep_resolving(
    mut seeds: watch::Receiver<Vec<Seed>>,
    joined: watch::Receiver<JoinState>,
    commands: mpsc::WeakSender<Command>,
) {
    let mut resolver = SeedResolver::default();
    loop {
        let current = seeds.borrow_and_update().clone();
        if current.iter().any(Seed::is_name) {
            let resolved = resolver.resolve(&current).await;
            report_failures(&resolved);
            let command = Command::SeedsResolved {
                seeds: current,
                addrs: resolved.addrs,
            };
            let Some(commands) = commands.upgrade() else {
                return;
            };
            if commands.send(command).await.is_err() {
                return;
            }
        }
        let wait = if *joined.borrow() == JoinState::Joining {
            RESOLVE_WHILE_JOINING
        } else {
            RESOLVE_EVERY
        };
        tokio::select! {
            changed = seeds.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::proto::rr::{Name, RData, Record};
    use hickory_resolver::proto::serialize::binary::{BinDecodable, BinEncodable};

    #[test]
    fn seeds_parse_and_print_back() {
        for text in [
            "127.0.0.1:7946",
            "[::1]:7946",
            "gossip-0.gossip.default.svc:7946",
            "localhost:1",
            "srv:_gossip._udp.gossip.default.svc.cluster.local",
        ] {
            let seed: Seed = text.parse().expect(text);
            assert_eq!(seed.to_string(), text);
        }
        for bad in ["gossip-0", "host:port", "srv:", ":7946", "a:b:c"] {
            assert!(bad.parse::<Seed>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn host_names_resolve_through_the_system_resolver() {
        let mut resolver = SeedResolver::default();
        let seeds = vec![
            "localhost:7000".parse().expect("a seed"),
            "127.0.0.1:7001".parse().expect("a seed"),
            "no-such-host.invalid:7002".parse().expect("a seed"),
        ];
        let resolved = resolver.resolve(&seeds).await;
        assert!(
            resolved
                .addrs
                .contains(&"127.0.0.1:7000".parse().expect("addr")),
            "{resolved:?}"
        );
        assert!(
            resolved
                .addrs
                .contains(&"127.0.0.1:7001".parse().expect("addr"))
        );
        assert_eq!(resolved.failures.len(), 1, "{resolved:?}");
        assert_eq!(resolved.failures[0].0, seeds[2]);
    }

    /// A DNS server on loopback that answers every SRV question with two
    /// targets on `localhost`.
    async fn srv_server() -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_bytes(&buf[..len]) else {
                    continue;
                };
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_response_code(ResponseCode::NoError)
                    .add_queries(query.queries().to_vec());
                if let Some(question) = query.queries().first() {
                    let target = Name::from_ascii("localhost.").expect("a name");
                    for port in [7101, 7102] {
                        answer.add_answer(Record::from_rdata(
                            question.name().clone(),
                            60,
                            RData::SRV(SRV::new(0, 0, port, target.clone())),
                        ));
                    }
                }
                if let Ok(bytes) = answer.to_bytes() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn srv_records_resolve_to_each_target_and_port() {
        let server = srv_server().await;
        let mut resolver = SeedResolver::with_server(server);
        let seeds = vec!["srv:_gossip._udp.gossip.test.".parse().expect("a seed")];
        let resolved = resolver.resolve(&seeds).await;
        assert!(resolved.failures.is_empty(), "{resolved:?}");
        for port in [7101, 7102] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            assert!(resolved.addrs.contains(&addr), "{resolved:?}");
        }
    }
}
