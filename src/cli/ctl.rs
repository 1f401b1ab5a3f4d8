//! `cicada ctl`: operate a running cluster through a node's admin API (`/api/v1`, see `http::admin`).
//!
//! `status` prints one line per node given with `--url` (repeat it for each node), plus the membership as
//! the first node sees it; `session ID`, `clients`, `transfer-leader NODE` and `drain` ask one node; `join NODE ADDR` and
//! `leave NODE` ask each `--url` in turn until the leader answers. The token is
//! `--token` or `--token-file` (a `CICADA_` variable would be read by `serve` as configuration).
//! Exit codes: 0 success, 1 the node refused or failed (its message is printed), 2 bad usage.

use super::CliError;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// A node's HTTP address (http://host:port); repeat it for `status` across nodes.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// The admin API token ([http] token of the nodes).
    #[arg(long)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(long = "token-file")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Nodes, roles, leader, term, commit/applied index, members, routes, connections and sessions.
    Status {
        /// Print the nodes' JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A client's stored session: owner node, subscriptions, inbox.
    Session { client_id: String },
    /// The clients with a session on the node.
    Clients,
    /// Hand raft leadership to another member (ask the leader).
    TransferLeader { node: u64 },
    /// Add a node to the cluster (started with `[cluster] join = true`): it catches up as a learner, then
    /// votes. Asked of whichever `--url` leads.
    Join {
        node: u64,
        /// Its peer address, host:port (its `[cluster] advertise`).
        addr: String,
    },
    /// Remove a node from the cluster (drain it first if it runs): its routes go, its connections' Wills
    /// fire and its clients resume their sessions on other nodes. Asked of whichever `--url` leads.
    Leave {
        node: u64,
        /// Remove it even though the leader heard from it recently (it must be stopped: a node removed
        /// while it runs keeps its clients).
        #[arg(long)]
        force: bool,
    },
    /// Drain the node: /ready turns 503, leadership goes to another node, clients are disconnected (v5:
    /// 0x8B), the node exits 0.
    Drain,
}

/// How long a node may take to answer.
const ANSWER: Duration = Duration::from_secs(10);

/// How long a join may take: its catch-up wait (then 504) and up to five store commits.
const JOIN_ANSWER: Duration = Duration::from_secs(60);

/// How long a leave may take: up to three store commits.
const LEAVE_ANSWER: Duration = Duration::from_secs(30);

/// The largest answer read (a cluster status of thousands of routes fits easily).
const MAX_ANSWER: u64 = 16 << 20;

/// host:port of an `http://` URL.
fn parse_url(url: &str) -> Result<String, CliError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| CliError::usage(format!("{url}: only http:// URLs are supported")))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || !host.contains(':') {
        return Err(CliError::usage(format!("{url}: expected http://host:port")));
    }
    Ok(host.to_string())
}

/// One HTTP/1.1 request (Connection: close): (status, JSON body).
async fn request(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<(u16, Value), CliError> {
    let host = parse_url(url)?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(&host).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.take(MAX_ANSWER + 1).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(wait, io)
        .await
        .map_err(|_| CliError::failure(format!("{url}: no answer in {} s", wait.as_secs())))?
        .map_err(|e| CliError::failure(format!("{url}: {e}")))?;
    if raw.len() as u64 > MAX_ANSWER {
        return Err(CliError::failure(format!(
            "{url}: answer larger than {MAX_ANSWER} bytes"
        )));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CliError::failure(format!("{url}: not an HTTP answer")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CliError::failure(format!("{url}: not an HTTP answer")))?;
    let json = match serde_json::from_str(body) {
        Ok(v) => v,
        // An error page of something else on that port: its text is the message.
        Err(_) if !(200..300).contains(&status) => Value::String(body.trim().to_string()),
        Err(e) => {
            return Err(CliError::failure(format!(
                "{url}: the answer is not JSON: {e}"
            )))
        }
    };
    Ok((status, json))
}

/// The body of a 2xx answer, or the node's error message.
fn ok(url: &str, (status, body): (u16, Value)) -> Result<Value, CliError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    Err(CliError::failure(format!("{url}: {status}: {message}")))
}

pub async fn run(args: CtlArgs) -> Result<(), CliError> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| CliError::usage(format!("{}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
    };
    let token = token.as_deref();
    for url in &args.url {
        parse_url(url)?;
    }
    let first = args.url[0].clone();
    match args.command {
        CtlCommand::Status { json } => {
            let mut rows = Vec::new();
            let mut failed = false;
            for url in &args.url {
                match request(url, "GET", "/api/v1/cluster", token, ANSWER)
                    .await
                    .and_then(|r| ok(url, r))
                {
                    Ok(v) => rows.push((url.clone(), Some(v))),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                        rows.push((url.clone(), None));
                    }
                }
            }
            if json {
                let all: Vec<Value> = rows.iter().filter_map(|(_, v)| v.clone()).collect();
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                print_status(&rows);
            }
            if failed {
                return Err(CliError::failure("some nodes did not answer"));
            }
            Ok(())
        }
        CtlCommand::Session { client_id } => {
            let path = format!("/api/v1/sessions/{}", encode_segment(&client_id));
            let v = ok(&first, request(&first, "GET", &path, token, ANSWER).await?)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        CtlCommand::Clients => {
            let v = ok(
                &first,
                request(&first, "GET", "/api/v1/clients", token, ANSWER).await?,
            )?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        CtlCommand::Drain => {
            ok(
                &first,
                request(&first, "POST", "/api/v1/drain", token, ANSWER).await?,
            )?;
            println!("{first}: draining");
            Ok(())
        }
        CtlCommand::Join { node, addr } => {
            let path = format!(
                "/api/v1/cluster/join?node={node}&addr={}",
                encode_segment(&addr)
            );
            let (url, v) = on_leader(&args.url, &path, token, JOIN_ANSWER).await?;
            println!("{url}: node {node} joined; voters {}", v["voters"]);
            Ok(())
        }
        CtlCommand::Leave { node, force } => {
            let path = format!("/api/v1/cluster/leave?node={node}&force={force}");
            let (url, v) = on_leader(&args.url, &path, token, LEAVE_ANSWER).await?;
            println!("{url}: node {node} left; voters {}", v["voters"]);
            Ok(())
        }
        CtlCommand::TransferLeader { node } => {
            let path = format!("/api/v1/cluster/transfer-leader?to={node}");
            ok(&first, request(&first, "POST", &path, token, ANSWER).await?)?;
            println!("leadership is moving to node {node}");
            Ok(())
        }
    }
}

/// POSTs to each node in turn until the leader answers (a follower answers 409 naming the leader).
async fn on_leader(
    urls: &[String],
    path: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<(String, Value), CliError> {
    let mut last = None;
    for url in urls {
        match request(url, "POST", path, token, wait).await {
            Ok((409, body))
                if body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not the leader")) =>
            {
                last = ok(url, (409, body)).err();
            }
            Ok(answer) => return ok(url, answer).map(|v| (url.clone(), v)),
            Err(e) => {
                eprintln!("{e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| CliError::usage("give the nodes with --url")))
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_status(rows: &[(String, Option<Value>)]) {
    println!(
        "{:<6} {:<10} {:<7} {:<6} {:>10} {:>10} {:>7} {:>9} {:>6}  URL",
        "NODE", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "READY", "CONNS", "ROUTES"
    );
    for (url, v) in rows {
        let Some(v) = v else {
            println!(
                "{:<6} {:<10} {:<7} {:<6} {:>10} {:>10} {:>7} {:>9} {:>6}  {url}",
                "?", "unreachable", "-", "-", "-", "-", "-", "-", "-"
            );
            continue;
        };
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let node = n("node_id");
        let routes = v
            .get("routes_per_node")
            .and_then(|r| r.get(node.to_string()))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        println!(
            "{:<6} {:<10} {:<7} {:<6} {:>10} {:>10} {:>7} {:>9} {:>6}  {url}",
            node,
            v.get("role").and_then(Value::as_str).unwrap_or("?"),
            n("leader"),
            n("term"),
            n("commit_index"),
            n("applied_index"),
            if v.get("ready").and_then(Value::as_bool).unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            n("connections"),
            routes,
        );
    }
    if let Some((_, Some(v))) = rows.iter().find(|(_, v)| v.is_some()) {
        if let Some(members) = v.get("members").and_then(Value::as_object) {
            let list: Vec<String> = members
                .iter()
                .map(|(id, addr)| format!("{id}@{}", addr.as_str().unwrap_or("?")))
                .collect();
            println!("members: {}", list.join(", "));
        }
    }
}
