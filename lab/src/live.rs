//! The live view on the terminal: on a TTY, one status line redrawn in place (a progress bar,
//! elapsed time, active faults, route changes, agents on the latest table, the worst link),
//! with events printed above it; otherwise a plain status line every few seconds.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// What the status line shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Time since the run started.
    pub elapsed: Duration,
    /// The run's length.
    pub duration: Duration,
    /// Active faults, by name (`blackhole a<->b`).
    pub faults: Vec<String>,
    /// Route changes so far, all agents.
    pub changes: usize,
    /// Agents on the leader's latest table, as `n/m`, or why not known.
    pub agents: String,
    /// The worst link in the controller's view (`a→b down`), if any is not clean.
    pub worst: Option<String>,
}

/// The terminal side of the live view.
#[derive(Debug)]
pub struct Live {
    tty: bool,
    /// The status line is on screen (TTY only).
    drawn: bool,
    next_plain: Duration,
}

const BAR: usize = 24;

impl Live {
    /// A live view on stdout; redrawn in place when stdout is a terminal.
    pub fn new() -> Self {
        Live {
            tty: std::io::stdout().is_terminal(),
            drawn: false,
            next_plain: Duration::from_secs(5),
        }
    }

    /// Prints an event (a flap) on a line of its own, above the status line.
    pub fn event(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.drawn {
            let _ = write!(out, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(out, "{text}");
    }

    /// Shows the status: redrawn at every call on a terminal, a plain line every 5 s elsewhere.
    pub fn status(&mut self, s: &Status) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let done = if s.duration.is_zero() {
                BAR
            } else {
                ((s.elapsed.as_secs_f64() / s.duration.as_secs_f64()) * BAR as f64).round() as usize
            }
            .min(BAR);
            let _ = write!(
                out,
                "\r\x1b[2K[{}{}] {:>4.0}/{:.0} s  {}",
                "#".repeat(done),
                ".".repeat(BAR - done),
                s.elapsed.as_secs_f64(),
                s.duration.as_secs_f64(),
                render(s)
            );
            let _ = out.flush();
            self.drawn = true;
        } else if s.elapsed >= self.next_plain {
            self.next_plain = s.elapsed + Duration::from_secs(5);
            let _ = writeln!(out, "t={:>5.0}s  {}", s.elapsed.as_secs_f64(), render(s));
        }
    }

    /// Ends the status line so that what follows starts on a line of its own.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stdout());
            self.drawn = false;
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

/// The status without the bar: what both kinds of terminal show.
pub fn render(s: &Status) -> String {
    let faults = if s.faults.is_empty() {
        "no fault".to_string()
    } else {
        format!("faults: {}", s.faults.join(", "))
    };
    let worst = s
        .worst
        .as_ref()
        .map_or_else(String::new, |w| format!("  worst link {w}"));
    format!(
        "{faults}  route changes {}  agents on the latest table {}{worst}",
        s.changes, s.agents
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_names_faults_changes_agents_and_the_worst_link() {
        let s = Status {
            elapsed: Duration::from_secs(30),
            duration: Duration::from_secs(60),
            faults: vec!["blackhole a<->b".into()],
            changes: 4,
            agents: "6/6".into(),
            worst: Some("a→b down".into()),
        };
        assert_eq!(
            render(&s),
            "faults: blackhole a<->b  route changes 4  agents on the latest table 6/6  worst link a→b down"
        );
        let calm = Status {
            worst: None,
            faults: Vec::new(),
            ..s
        };
        assert!(render(&calm).starts_with("no fault  route changes 4"));
    }
}
