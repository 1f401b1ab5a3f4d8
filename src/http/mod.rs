//! HTTP for operators: `/metrics` (Prometheus text), `/health` (the process answers), `/ready` (accepting
//! clients: 503 while shutting down or without a raft leader), and the admin API under `/api/v1`
//! ([`admin`]). Anything else gets a 4xx with a message.

pub mod admin;
pub mod members;

use crate::broker::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves until shutdown; `token`: the bearer token the admin API requires (none: open).
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, token: Option<Arc<str>>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ctx, token) = (ctx.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (ctx, token) = (ctx.clone(), token.clone());
                async move {
                    let response = if req.uri().path().starts_with("/api/") {
                        admin::respond(req, &ctx, token.as_deref()).await
                    } else {
                        respond(&req, &ctx)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

pub(crate) fn text(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn respond(req: &Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            format!("{} is not allowed; use GET\n", req.method()),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            // The retained index changes as the store applies commands: read its size at scrape time.
            ctx.metrics.retained.set(ctx.retained.len() as i64);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                ctx.metrics.render(),
            )
        }
        "/health" => text(StatusCode::OK, plain, "ok\n"),
        "/ready" => {
            if ctx.shutdown.is_cancelled()
                || ctx.draining.load(std::sync::atomic::Ordering::Acquire)
            {
                text(StatusCode::SERVICE_UNAVAILABLE, plain, "draining\n")
            } else if ctx.store.as_ref().is_some_and(|s| !s.has_leader()) {
                // Nothing that needs consensus (retained messages) could be acknowledged: out of rotation.
                text(StatusCode::SERVICE_UNAVAILABLE, plain, "no raft leader\n")
            } else {
                text(StatusCode::OK, plain, "ready\n")
            }
        }
        other => text(
            StatusCode::NOT_FOUND,
            plain,
            format!("no such endpoint: {other} (try /metrics, /health, /ready, /api/v1/cluster)\n"),
        ),
    }
}
