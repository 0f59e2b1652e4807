//! The optional Prometheus listener: plain HTTP/1.1 on a loopback address (the config refuses
//! any other), `GET /metrics` only. Each scrape reads a fresh snapshot off the async runtime,
//! then the build and process metrics.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::service::authority::Authority;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn answer(
    authority: Arc<Authority>,
    notify: super::notify::Health,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, v);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "only /metrics is served\n".into(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    let snapshot = tokio::task::spawn_blocking(move || authority.metrics_snapshot()).await;
    Ok(match snapshot {
        Ok(Ok(s)) => reply(
            StatusCode::OK,
            crate::service::metrics::render(&s)
                + &notify.render()
                + &super::process_metrics::render(),
        ),
        Ok(Err(e)) => {
            tracing::error!("metrics: {e}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                crate::service::metrics::unavailable(&e),
            )
        }
        Err(e) => {
            tracing::error!("metrics task: {e}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics task failed\n".into(),
            )
        }
    })
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    (authority, notify): (Arc<Authority>, super::notify::Health),
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(stop);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("metrics accept: {e}");
                        continue;
                    }
                };
                let (authority, notify) = (authority.clone(), notify.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        answer(authority.clone(), notify.clone(), r)
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, "metrics connection: {e}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    Ok(())
}
