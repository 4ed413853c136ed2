//! `/stream`: Alpaca's trading WebSocket. The client authenticates
//! (`{"action":"auth","key":…,"secret":…}`), listens
//! (`{"action":"listen","data":{"streams":["trade_updates"]}}`), and then gets every
//! update of its account's orders as `{"stream":"trade_updates","data":{…}}`, in binary
//! frames as Alpaca's paper stream sends them. Nothing is replayed: what happens
//! before `listen`, or while disconnected, is only in the REST API.

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    response::Response,
};
use serde_json::{Value, json};

use super::PaperVenue;

pub(super) async fn upgrade(State(venue): State<PaperVenue>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(venue, socket))
}

fn frame(v: Value) -> Message {
    Message::Binary(v.to_string().into_bytes().into())
}

async fn serve(venue: PaperVenue, mut socket: WebSocket) {
    let mut drops = venue.drops.subscribe();
    drops.borrow_and_update();
    let mut account = None;
    // Handshake: auth, then listen.
    let mut updates = loop {
        let message = tokio::select! {
            m = socket.recv() => m,
            _ = drops.changed() => return,
        };
        let Some(Ok(message)) = message else {
            return;
        };
        let body = match message {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => return,
            _ => continue,
        };
        let Ok(request) = serde_json::from_slice::<Value>(&body) else {
            let _ = socket
                .send(frame(
                    json!({"stream": "listening", "data": {"error": "invalid syntax"}}),
                ))
                .await;
            continue;
        };
        match request.get("action").and_then(Value::as_str) {
            Some("auth" | "authenticate") => {
                let key = request.get("key").and_then(Value::as_str).unwrap_or("");
                let secret = request.get("secret").and_then(Value::as_str).unwrap_or("");
                let ok = !key.is_empty() && !secret.is_empty();
                let status = if ok { "authorized" } else { "unauthorized" };
                let answer = json!({"stream": "authorization",
                                    "data": {"status": status, "action": "authenticate"}});
                if socket.send(frame(answer)).await.is_err() || !ok {
                    return;
                }
                account = Some(key.to_owned());
            }
            Some("listen") if account.is_some() => {
                // Subscribed before answering: every update after the answer arrives.
                let updates = venue.updates.subscribe();
                let answer = json!({"stream": "listening", "data": {"streams": ["trade_updates"]}});
                if socket.send(frame(answer)).await.is_err() {
                    return;
                }
                break updates;
            }
            _ => {
                let answer = json!({"stream": "authorization",
                                    "data": {"status": "unauthorized", "action": "listen"}});
                let _ = socket.send(frame(answer)).await;
                return;
            }
        }
    };
    let account = account.unwrap_or_default();
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(update) if update.0 == account => {
                    if socket.send(frame(update.1.clone())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A listener too slow for the venue loses the connection, as at a
                // real venue; it reconnects and catches up through REST.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(_) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
            _ = drops.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
