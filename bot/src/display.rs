//! The virtual display: one Xvfb on a display number it picks itself.
//!
//! Readiness is Xvfb's own word: with `-displayfd 1` it writes the display number to stdout
//! once it accepts connections, which also avoids racing other bots for a free number. This
//! module must not know what draws on the display.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{describe_exit, ChildError, Supervised};

/// Pure: the Xvfb command line for a screen of `width` x `height`.
pub fn xvfb_args(width: u32, height: u32) -> Vec<String> {
    [
        "-displayfd",
        "1",
        "-screen",
        "0",
        &format!("{width}x{height}x24"),
        "-nolisten",
        "tcp",
        "-noreset",
        // No screensaver or DPMS blanking during a long meeting.
        "-s",
        "0",
        "-dpms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A running Xvfb and the `DISPLAY` value that reaches it.
#[derive(Debug)]
pub struct Display {
    pub child: Supervised,
    pub display: String,
}

impl Display {
    pub async fn start(width: u32, height: u32, ready_within: Duration) -> Result<Self, ChildError> {
        let mut cmd = Command::new("Xvfb");
        cmd.args(xvfb_args(width, height)).stdout(Stdio::piped()).stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = Supervised::spawn_configured("xvfb", cmd, None)?;
        let stdout = child.child_mut().stdout.take().expect("stdout was piped");
        let started = Instant::now();
        let reader = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(ready_within, reader).await {
            Ok(Ok(Ok(line))) => line,
            Ok(Ok(Err(err))) => return Err(not_ready(started, err.to_string())),
            Ok(Err(join)) => return Err(not_ready(started, join.to_string())),
            Err(_) => return Err(not_ready(started, "no display number on its stdout".into())),
        };
        let number: u32 = match line.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                let status = child.wait_exit(Duration::from_millis(500)).await;
                return Err(ChildError::ExitedEarly {
                    name: "xvfb",
                    status: status.map(describe_exit).unwrap_or_else(|| "still running".into()),
                    detail: format!("expected a display number, read {:?}", line.trim()),
                });
            }
        };
        tracing::debug!(display = number, ready_ms = started.elapsed().as_millis() as u64, "xvfb ready");
        Ok(Self { child, display: format!(":{number}") })
    }
}

fn not_ready(started: Instant, detail: String) -> ChildError {
    ChildError::NotReady { name: "xvfb", waited_ms: started.elapsed().as_millis(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_ask_for_the_display_number_and_no_tcp() {
        let args = xvfb_args(1280, 720);
        assert!(args.windows(2).any(|w| w == ["-displayfd", "1"]));
        assert!(args.windows(2).any(|w| w == ["-nolisten", "tcp"]));
        assert!(args.contains(&"1280x720x24".to_string()));
    }
}
