//! The bots' WebSocket: a bot dials with its launch token; the manager checks it, and then every
//! message from the bot becomes a `Command::FromBot` and every message for it goes out on the
//! socket, until either side closes or the controller shuts down. It must not interpret
//! messages (the manager does).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use recfleet_proto::protocol::BotMessage;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ask, AppState};
use crate::manager::Command;
use crate::model::ApiError;

/// A connection's read buffer: a heartbeat is about 200 bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// The largest message a bot may send.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct BotQuery {
    bot_id: String,
}

/// Bots dial here with their launch token as a bearer token and their id in the query.
pub(super) async fn bot_connect(
    State(state): State<AppState>,
    Query(q): Query<BotQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    match ask(&state, |reply| Command::BotConnected { bot_id: q.bot_id.clone(), token, tx, reply }).await {
        Ok(true) => {}
        // A token this controller did not issue: the bot gives up.
        Ok(false) => return ApiError::Unauthorized.into_response(),
        // No answer (the controller is stopping): the bot tries again, or the next controller.
        Err(err) => return err.into_response(),
    }
    let commands = state.commands.clone();
    let shutdown = state.shutdown.clone();
    // Bots' messages are small (the largest, `Finished`, is a few KiB): small buffers keep a
    // connected bot cheap (tungstenite's defaults are 128 KiB each way), and a bound on a
    // message keeps a misbehaving bot from making the controller buffer megabytes.
    let ws = ws.read_buffer_size(READ_BUFFER_BYTES).write_buffer_size(0).max_message_size(MAX_MESSAGE_BYTES);
    ws.on_upgrade(move |socket: WebSocket| async move {
        let bot_id = q.bot_id;
        let mut socket = socket;
        loop {
            tokio::select! {
                frame = socket.recv() => match frame {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<BotMessage>(&text) {
                        Ok(msg) => {
                            if commands.send(Command::FromBot { bot_id: bot_id.clone(), msg }).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => tracing::warn!(bot_id = %bot_id, error = %err, "unreadable bot message"),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                Some(msg) = rx.recv() => {
                    let text = serde_json::to_string(&msg).expect("messages serialize");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = shutdown.cancelled() => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            }
        }
        let _ = commands.send(Command::BotDisconnected { bot_id }).await;
    })
}
