//! A real Chromium, headless, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs): the dashboard's tests click through
//! its pages as a person would and save a screenshot of each step they check.
//!
//! [`Browser`] wraps fantoccini's async client in blocking calls, so that a test reads
//! as a sequence of steps like the rest of the harness. Chromium runs with a fresh
//! profile and without its background services; it accepts the collector's
//! certificate, which a private CA signed, because the test talks only to loopback.

use crate::{die_with_test, free_port, missing_prerequisite, stop_child, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium and its chromedriver, ended when dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// Where screenshots go: `DRIFTWATCH_SCREENSHOTS`, or `target/screenshots`.
fn screenshot_dir() -> PathBuf {
    match std::env::var_os("DRIFTWATCH_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/debug/deps/test-hash -> target/screenshots
            exe.ancestors().nth(3).unwrap().join("screenshots")
        }
    }
}

impl Browser {
    /// Starts chromedriver and a Chromium session; `None` (said why) when they are not
    /// installed outside CI.
    pub fn start() -> Option<Browser> {
        for program in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(program).is_file() {
                missing_prerequisite(&format!(
                    "{program} is missing (apt-get install chromium chromium-driver)"
                ));
                return None;
            }
        }
        let port = free_port();
        let driver = die_with_test(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .spawn()
        .unwrap();
        wait_until(Duration::from_secs(20), "chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let profile = tempfile::Builder::new()
            .prefix("driftwatch-chromium-")
            .tempdir()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let capabilities = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a Chromium session");
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).unwrap();
        Some(Browser {
            runtime,
            client: Some(client),
            driver,
            _profile: profile,
            shots,
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// The page's URL now.
    pub fn url(&self) -> String {
        let url = self.runtime.block_on(self.client().current_url()).unwrap();
        url.to_string()
    }

    /// Types `text` into the field `css`.
    pub fn fill(&self, css: &str, text: &str) {
        self.runtime.block_on(async {
            let field = self.client().find(Locator::Css(css)).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(text).await.unwrap();
        });
    }

    /// Clicks the element `css` (and waits for the page it leads to, if any).
    pub fn click(&self, css: &str) {
        self.runtime.block_on(async {
            let element = self.client().find(Locator::Css(css)).await.unwrap();
            element.click().await.unwrap();
        });
    }

    /// The text of the first element `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.runtime.block_on(async {
            let element = self.client().find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()
        })
    }

    /// The texts of every element `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let mut texts = Vec::new();
            for element in self.client().find_all(Locator::Css(css)).await.unwrap() {
                texts.push(element.text().await.unwrap());
            }
            texts
        })
    }

    /// Whether the element `css` exists and is shown.
    pub fn shown(&self, css: &str) -> bool {
        self.runtime.block_on(async {
            match self.client().find(Locator::Css(css)).await {
                Ok(element) => element.is_displayed().await.unwrap_or(false),
                Err(_) => false,
            }
        })
    }

    /// Runs `script` (an async function body that ends by calling
    /// `arguments[arguments.length - 1](result)`) in the page; its result.
    pub fn run_async(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute_async(script, Vec::new()))
            .unwrap()
    }

    /// Saves the page as `NAME.png` in the screenshot directory; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        stop_child(&mut self.driver, libc::SIGTERM);
    }
}
