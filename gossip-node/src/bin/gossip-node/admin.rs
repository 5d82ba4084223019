//! The HTTP admin API, bound to loopback by default. Its JSON is documented
//! in the README.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gossip_node::{Member, Node, NodeId, Seed};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

/// What the handlers share.
pub(crate) struct Admin {
    pub(crate) node: Node,
    pub(crate) cluster: String,
    pub(crate) started: tokio::time::Instant,
    /// Told when `POST /v1/leave` asks the agent to leave and exit.
    pub(crate) leave: Arc<Notify>,
    /// The bearer token every request must carry, if one is set.
    pub(crate) token: Option<String>,
    /// Where `POST /v1/reload` reads the trust bundle from.
    pub(crate) trust_files: crate::TrustFiles,
}

/// A member as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MemberJson {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) status: String,
    pub(crate) incarnation: u64,
    pub(crate) state_version: u64,
}

impl From<&Member> for MemberJson {
    fn from(m: &Member) -> Self {
        MemberJson {
            name: m.meta.name().to_string(),
            id: format!("{:#}", m.id),
            addr: m.meta.addr(),
            status: m.status.as_str().to_string(),
            incarnation: m.incarnation.get(),
            state_version: m.state_version,
        }
    }
}

/// A member of `GET /v1/ring`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RingMemberJson {
    pub(crate) name: String,
    pub(crate) id: String,
    /// Its membership status.
    pub(crate) status: String,
    /// Its ring status, if it published a ring state.
    pub(crate) ring_status: Option<String>,
    pub(crate) load: Option<u64>,
    /// How many tokens it published.
    pub(crate) tokens: usize,
    /// The share of the ring it owns now, from 0 to 1.
    pub(crate) owns: f64,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusJson {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) cluster: String,
    pub(crate) alive: u64,
    pub(crate) suspect: u64,
    pub(crate) dead: u64,
    pub(crate) left: u64,
    pub(crate) incarnation: u64,
    pub(crate) local_health: u32,
    /// How late the latest SWIM frame was handled, in milliseconds.
    #[serde(default)]
    pub(crate) input_lag_ms: u64,
    pub(crate) uptime_s: u64,
    /// The configuration's risks, each naming its fix.
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

/// A key as the API shows it. Values are shown as UTF-8 (lossily).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyJson {
    pub(crate) owner: String,
    pub(crate) key: String,
    pub(crate) value: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorJson {
    pub(crate) error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorJson {
            error: message.into(),
        }),
    )
        .into_response()
}

fn stopped() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the node has stopped")
}

pub(crate) fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/status", get(status))
        .route("/v1/ring", get(ring))
        .route("/v1/health", get(health))
        .route("/v1/kv/{node}", get(node_keys))
        .route("/v1/kv/{node}/{key}", get(get_key))
        .route("/v1/local/kv/{key}", put(set_key).delete(delete_key))
        .route("/v1/join", post(join))
        .route("/v1/leave", post(leave))
        .route("/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            require_token,
        ))
        .with_state(admin)
}

/// Refuses a request without the configured bearer token (compared in
/// constant time, so its bytes cannot be guessed one by one from timing).
async fn require_token(
    State(admin): State<Arc<Admin>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &admin.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let valid = given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())));
        if !valid {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs its token: pass --token or set GOSSIP_ADMIN_TOKEN (sent as `Authorization: Bearer`)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

async fn members(State(admin): State<Arc<Admin>>) -> Response {
    let members = admin.node.members();
    Json(members.iter().map(MemberJson::from).collect::<Vec<_>>()).into_response()
}

async fn ring(State(admin): State<Arc<Admin>>) -> Response {
    let Ok(ring) = admin.node.ring().await else {
        return stopped();
    };
    let shares = ring.shares();
    let mut members: Vec<RingMemberJson> = ring
        .members()
        .iter()
        .map(|m| RingMemberJson {
            name: m.name.clone(),
            id: format!("{:#}", m.id),
            status: m.member_status.as_str().to_string(),
            ring_status: m.state.as_ref().map(|s| s.status.as_str().to_string()),
            load: m.state.as_ref().map(|s| s.load),
            tokens: m.state.as_ref().map_or(0, |s| s.tokens.len()),
            owns: shares.get(&m.id).copied().unwrap_or(0.0),
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Json(members).into_response()
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    let Ok(metrics) = admin.node.metrics().await else {
        return stopped();
    };
    let members = admin.node.members();
    let name = members
        .iter()
        .find(|m| m.id == admin.node.id())
        .map(|m| m.meta.name().to_string())
        .unwrap_or_default();
    Json(StatusJson {
        name,
        id: format!("{:#}", admin.node.id()),
        addr: admin.node.addr(),
        cluster: admin.cluster.clone(),
        alive: metrics.members.alive,
        suspect: metrics.members.suspect,
        dead: metrics.members.dead,
        left: metrics.members.left,
        incarnation: metrics.incarnation,
        local_health: metrics.local_health,
        input_lag_ms: metrics.input_lag_ms,
        uptime_s: admin.started.elapsed().as_secs(),
        warnings: admin.node.warnings().to_vec(),
    })
    .into_response()
}

async fn health(State(admin): State<Arc<Admin>>) -> Response {
    match admin.node.metrics().await {
        Ok(_) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(_) => stopped(),
    }
}

/// A member named by its name, its full id, or a prefix of its id.
async fn resolve(admin: &Admin, who: &str) -> Result<NodeId, Response> {
    let members = admin.node.members();
    // A name wins over an id prefix (a name may look like hex).
    let mut found: Vec<&Member> = members.iter().filter(|m| m.meta.name() == who).collect();
    if found.is_empty() {
        found = members
            .iter()
            .filter(|m| format!("{:#}", m.id).starts_with(who))
            .collect();
    }
    match found.as_slice() {
        [one] => Ok(one.id),
        [] => Err(error(
            StatusCode::NOT_FOUND,
            format!("no member named `{who}`"),
        )),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{who}` names several members; give more of the id"),
        )),
    }
}

async fn node_keys(State(admin): State<Arc<Admin>>, Path(node): Path<String>) -> Response {
    let owner = match resolve(&admin, &node).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    match admin.node.keys(owner).await {
        Ok(keys) => Json(
            keys.iter()
                .map(|(k, v)| KeyJson {
                    owner: format!("{owner:#}"),
                    key: k.as_str().to_string(),
                    value: String::from_utf8_lossy(v).into_owned(),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(_) => stopped(),
    }
}

async fn get_key(
    State(admin): State<Arc<Admin>>,
    Path((node, key)): Path<(String, String)>,
) -> Response {
    let owner = match resolve(&admin, &node).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    match admin.node.get(owner, &key).await {
        Ok(Some(value)) => Json(KeyJson {
            owner: format!("{owner:#}"),
            key,
            value: String::from_utf8_lossy(&value).into_owned(),
        })
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("{node} has no key `{key}`")),
        Err(_) => stopped(),
    }
}

async fn set_key(
    State(admin): State<Arc<Admin>>,
    Path(key): Path<String>,
    body: String,
) -> Response {
    match admin.node.set(key.as_str(), body).await {
        Ok(version) => Json(serde_json::json!({"version": version})).into_response(),
        Err(gossip_node::Error::Stopped) => stopped(),
        Err(err) => error(StatusCode::BAD_REQUEST, err.to_string()),
    }
}

async fn delete_key(State(admin): State<Arc<Admin>>, Path(key): Path<String>) -> Response {
    match admin.node.delete(&key).await {
        Ok(Some(version)) => Json(serde_json::json!({"version": version})).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no key `{key}`")),
        Err(gossip_node::Error::Stopped) => stopped(),
        Err(err) => error(StatusCode::BAD_REQUEST, err.to_string()),
    }
}

/// How long `POST /v1/join` waits for a seed to answer before it reports
/// that the node is still trying.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/join` with `{"seeds": ["host:port", ...]}`: joins through the
/// seeds and waits for one to answer.
async fn join(State(admin): State<Arc<Admin>>, body: String) -> Response {
    #[derive(serde::Deserialize)]
    struct JoinJson {
        seeds: Vec<Seed>,
    }
    let seeds = match serde_json::from_str::<JoinJson>(&body) {
        Ok(join) => join.seeds,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"seeds\": [\"host:port\", ...]}}: {err}"),
            );
        }
    };
    match admin.node.join(seeds).await {
        Ok(()) => {}
        Err(gossip_node::Error::Stopped) => return stopped(),
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    }
    match tokio::time::timeout(JOIN_WAIT, admin.node.joined()).await {
        Ok(Ok(())) => Json(serde_json::json!({"joined": true})).into_response(),
        Ok(Err(gossip_node::Error::Stopped)) => stopped(),
        Ok(Err(err)) => error(StatusCode::CONFLICT, err.to_string()),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no seed answered within {} s; the node keeps trying",
                JOIN_WAIT.as_secs()
            ),
        ),
    }
}

async fn leave(State(admin): State<Arc<Admin>>) -> Response {
    admin.leave.notify_one();
    Json(serde_json::json!({"leaving": true})).into_response()
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    match admin.trust_files.reload(&admin.node).await {
        Ok(revoked) => {
            Json(serde_json::json!({"reloaded": true, "revoked": revoked})).into_response()
        }
        Err(err) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{err:#}")),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    match admin.node.metrics().await {
        Ok(metrics) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics.to_prometheus(),
        )
            .into_response(),
        Err(_) => stopped(),
    }
}
