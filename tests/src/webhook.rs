//! A webhook receiver for the end-to-end tests: a real HTTP/1.1 server on loopback
//! that records every JSON body POSTed to it with its `Idempotency-Key`, and answers
//! as the test says: accepting, refusing (503, so the collector retries later), or
//! hanging without an answer (a delivery caught in flight, to kill its replica).
//! Deliveries are counted by key: at least once, and a repeat only with the same key.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    /// 200: delivered.
    Accept = 0,
    /// 503: not delivered, to be retried.
    Refuse = 1,
    /// No answer while it hangs; then the connection closes unanswered.
    Hang = 2,
}

/// One request: its `Idempotency-Key` (empty without one) and its JSON body.
pub type Request = (String, Value);

#[derive(Default)]
struct Log {
    /// Every request received, answered or not.
    attempts: Vec<Request>,
    /// The requests answered 200.
    delivered: Vec<Request>,
}

/// The receiver; it listens until the test ends.
pub struct WebhookReceiver {
    port: u16,
    log: Arc<Mutex<Log>>,
    answer: Arc<AtomicU8>,
}

impl Default for WebhookReceiver {
    fn default() -> Self {
        WebhookReceiver::start()
    }
}

impl WebhookReceiver {
    /// Starts listening, accepting every request.
    pub fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let answer = Arc::new(AtomicU8::new(Answer::Accept as u8));
        let (sink, mode) = (Arc::clone(&log), Arc::clone(&answer));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (sink, mode) = (Arc::clone(&sink), Arc::clone(&mode));
                std::thread::spawn(move || serve(stream, &sink, &mode));
            }
        });
        WebhookReceiver { port, log, answer }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Its port (to find the replica connected to it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How it answers from now on (a hanging request is released by any other answer).
    pub fn answer(&self, answer: Answer) {
        self.answer.store(answer as u8, Ordering::SeqCst);
    }

    /// The bodies delivered (answered 200) so far.
    pub fn received(&self) -> Vec<Value> {
        self.delivered().into_iter().map(|(_, body)| body).collect()
    }

    /// The requests delivered (answered 200) so far, with their keys.
    pub fn delivered(&self) -> Vec<Request> {
        self.log.lock().unwrap().delivered.clone()
    }

    /// Every request so far, answered or not, with its key.
    pub fn attempts(&self) -> Vec<Request> {
        self.log.lock().unwrap().attempts.clone()
    }

    /// The alerts of one kind delivered so far.
    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|b| b["kind"] == kind)
            .collect()
    }
}

/// One request's head: its body length and idempotency key; `None` at the end.
fn read_head(reader: &mut impl BufRead) -> Option<(usize, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let (mut length, mut key) = (0usize, String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Some((length, key));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("idempotency-key") {
                key = value.trim().to_string();
            }
        }
    }
}

fn serve(stream: TcpStream, log: &Mutex<Log>, answer: &AtomicU8) {
    let mut reader = BufReader::new(stream);
    while let Some((length, key)) = read_head(&mut reader) {
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&body) else {
            return;
        };
        log.lock()
            .unwrap()
            .attempts
            .push((key.clone(), value.clone()));
        let mut mode = answer.load(Ordering::SeqCst);
        if mode == Answer::Hang as u8 {
            while mode == Answer::Hang as u8 {
                std::thread::sleep(Duration::from_millis(50));
                mode = answer.load(Ordering::SeqCst);
            }
            // Released: the connection closes without an answer.
            return;
        }
        let stream = reader.get_mut();
        if mode == Answer::Refuse as u8 {
            let _ =
                stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        log.lock().unwrap().delivered.push((key, value));
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
}
