//! The command exchange: the uplink's second request to the data center, next to batch
//! uploads and on the same connection (`docs/commands.md`).
//!
//! `POST <batch URL's directory>/commands` with the results the data center has not recorded
//! yet; the answer carries commands and the results it recorded. The sender thread calls
//! [`Exchanger::maybe`] after each acknowledged batch and whenever the queue is idle: an
//! exchange is made when results wait (at once, then with backoff while it fails) or, when
//! idle, once per poll interval. A busy uplink makes no extra request: commands then come in
//! the batch acknowledgements, and results wait for a lull only while none are pending.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapwire::command::{self, Exchange, ExchangeAnswer};

use super::{now_ms, SharedStatus};
use crate::commands::CommandLink;
use crate::config::UplinkConfig;

/// Shortest pause between two exchanges made for pending results.
const MIN_GAP: Duration = Duration::from_millis(200);

/// The exchange's state in the sender thread.
pub struct Exchanger {
    link: Arc<dyn CommandLink>,
    url: url::Url,
    poll: Duration,
    last_attempt: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    initial_backoff: Duration,
}

impl Exchanger {
    pub fn new(cfg: &UplinkConfig, link: Arc<dyn CommandLink>, poll: Duration) -> Exchanger {
        let url = cfg.url.join(command::EXCHANGE_PATH).unwrap_or_else(|_| cfg.url.clone());
        Exchanger {
            link,
            url,
            poll,
            last_attempt: None,
            retry_at: None,
            backoff: cfg.backoff_initial,
            initial_backoff: cfg.backoff_initial,
        }
    }

    /// The command link, for commands found in batch acknowledgements.
    pub fn link(&self) -> &Arc<dyn CommandLink> {
        &self.link
    }

    /// Makes an exchange if one is due; `idle`: the queue has nothing to send.
    pub fn maybe(&mut self, agent: &ureq::Agent, io_limit: usize, idle: bool, status: &SharedStatus) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        let since = self.last_attempt.map(|t| now.duration_since(t));
        let results_due = self.link.unreported() > 0 && since.is_none_or(|s| s >= MIN_GAP);
        let poll_due = idle && since.is_none_or(|s| s >= self.poll);
        if !(results_due || poll_due) {
            return;
        }
        self.last_attempt = Some(now);
        let results = self.link.results(command::MAX_RESULTS_PER_EXCHANGE);
        let sent = results.len();
        match exchange(agent, &self.url, io_limit, &Exchange { results }) {
            Ok(answer) => {
                self.retry_at = None;
                self.backoff = self.initial_backoff;
                let n = answer.commands.len();
                if !answer.recorded.is_empty() {
                    self.link.recorded(&answer.recorded);
                }
                self.link.deliver(answer.commands);
                if n > 0 || sent > 0 {
                    log::info!("uplink: exchange: {sent} results reported, {n} commands received");
                }
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.exchanges += 1;
                s.last_exchange_ms = Some(now_ms());
                s.last_exchange_error = None;
                s.commands_received += n as u64;
            }
            Err(e) => {
                log::warn!("uplink: command exchange failed: {e}; {sent} results kept for the next one");
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(self.poll.max(self.initial_backoff));
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.last_exchange_error = Some(e);
            }
        }
    }
}

fn exchange(agent: &ureq::Agent, url: &url::Url, io_limit: usize, ex: &Exchange) -> Result<ExchangeAnswer, String> {
    let body = serde_json::to_vec(ex).map_err(|e| format!("encoding the exchange: {e}"))?;
    let resp = agent.request_url("POST", url).set("Content-Type", command::CONTENT_TYPE).send_bytes(&body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let mut text = String::new();
            let _ = r.into_reader().take(512).read_to_string(&mut text);
            return Err(format!(
                "data center answered HTTP {code}: {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let mut text = Vec::new();
    resp.into_reader()
        .take(io_limit as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading the exchange answer: {e}"))?;
    if text.len() > io_limit {
        return Err(format!("exchange answer larger than {io_limit} bytes"));
    }
    serde_json::from_slice(&text).map_err(|e| format!("exchange answer is not valid JSON: {e}"))
}
