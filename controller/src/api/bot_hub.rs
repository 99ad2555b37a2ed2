//! The bots' WebSocket: a bot dials with its launch token; the manager checks it, and then every
//! message from the bot becomes a `Command::FromBot` and every message for it goes out on the
//! socket, until either side closes or the controller shuts down. It must not interpret
//! messages (the manager does).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use recfleet_proto::protocol::{BotMessage, ControllerMessage};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ask, AppState};
use crate::ecs::Claim;
use crate::manager::Command;
use crate::model::ApiError;

/// A connection's read buffer: a heartbeat is about 200 bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// The largest message a bot may send.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A bot names itself (`bot_id`), or an ECS task does (`task`) until its launch token is
/// exchanged.
#[derive(Debug, Deserialize)]
pub(super) struct BotQuery {
    bot_id: Option<String>,
    task: Option<String>,
}

/// Bots dial here with their token as a bearer token and their id in the query; an ECS task
/// with its launch token and its task's id, answered first with `Welcome` (its id and own
/// token).
pub(super) async fn bot_connect(
    State(state): State<AppState>,
    Query(q): Query<BotQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_string();
    let (bot_id, token, welcome) = match (q.bot_id, q.task) {
        (Some(bot_id), _) => (bot_id, presented, None),
        (None, Some(task)) => match state.launch_tokens.claim(&task, &presented, std::time::Instant::now()) {
            Claim::Granted { bot_id, token } => {
                let welcome = ControllerMessage::Welcome { bot_id: bot_id.clone(), token: token.clone() };
                (bot_id, token, Some(welcome))
            }
            // Its RunTask answer is still on its way (or another controller launched it): retry.
            Claim::Unknown => return ApiError::LaunchPending.into_response(),
            Claim::Refused => {
                tracing::warn!(task = %task, "a wrong, replayed or expired launch token");
                return ApiError::Unauthorized.into_response();
            }
        },
        (None, None) => return ApiError::InvalidRequest("name the bot (bot_id) or its ECS task (task)".into()).into_response(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    match ask(&state, |reply| Command::BotConnected { bot_id: bot_id.clone(), token, tx: tx.clone(), reply }).await {
        Ok(true) => {}
        // A token this controller did not issue: the bot gives up.
        Ok(false) => return ApiError::Unauthorized.into_response(),
        // No answer (the controller is stopping): the bot tries again, or the next controller.
        Err(err) => return err.into_response(),
    }
    if let Some(welcome) = welcome {
        // Queued ahead of anything the manager sends on this connection.
        let _ = tx.send(welcome);
    }
    let commands = state.commands.clone();
    let shutdown = state.shutdown.clone();
    // Bots' messages are small (the largest, `Finished`, is a few KiB): small buffers keep a
    // connected bot cheap (tungstenite's defaults are 128 KiB each way), and a bound on a
    // message keeps a misbehaving bot from making the controller buffer megabytes.
    let ws = ws.read_buffer_size(READ_BUFFER_BYTES).write_buffer_size(0).max_message_size(MAX_MESSAGE_BYTES);
    ws.on_upgrade(move |socket: WebSocket| async move {
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
        // Names this connection: an older one that closes after a reconnect must not
        // take the newer one's place away.
        let _ = commands.send(Command::BotDisconnected { bot_id, tx }).await;
    })
}
