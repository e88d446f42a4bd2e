//! `Browser`: Debian's Chromium, headless, driven through `chromedriver` (WebDriver, with
//! the fantoccini client) for the console's end-to-end tests.
//!
//! Each `Browser` starts its own `chromedriver` on a free loopback port, in a process
//! group of its own, and a Chromium with a fresh profile in a temp dir; dropping it ends
//! that group (the driver and the browser it started) and removes the profile. Without
//! `chromium` or `chromedriver` on PATH the test is skipped with the install command,
//! unless `HOOKGATE_REQUIRE_BROWSER=1` (CI), where it fails. Nothing is downloaded.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tempfile::TempDir;

use super::{PATIENCE, eventually, skips};

/// Set to `1` (as CI does) to fail, not skip, a test that needs Chromium.
pub const REQUIRE_BROWSER: &str = "HOOKGATE_REQUIRE_BROWSER";

/// Chromium's flags for a headless run as root in a container: no sandbox (root), no
/// GPU, nothing fetched from the network in the background.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

pub struct Browser {
    client: Client,
    driver: Driver,
    _profile: TempDir,
}

/// The `chromedriver` process group; ended when dropped, even when a test panics.
struct Driver(Child);

impl Driver {
    fn stop(&mut self) {
        // The group holds the driver and the browser it started: ends both, by its id.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Browser {
    /// A headless Chromium with a window of `width`×`height`, or `None` (skipped).
    pub async fn start_or_skip(width: u32, height: u32) -> Option<Browser> {
        if !skips::installed_or_skip("chromedriver", "chromium-driver", REQUIRE_BROWSER)
            || !skips::installed_or_skip("chromium", "chromium", REQUIRE_BROWSER)
        {
            return None;
        }
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: dropping the browser ends the driver and Chromium.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = Driver(command.spawn().expect("chromedriver starts"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={width},{height}"));
        args.push("--lang=en-US".to_owned());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_binary(), "args": args},
        });
        let capabilities = capabilities.as_object().expect("an object").clone();
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually("chromedriver accepting a session", async || {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
        })
        .await;
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("the browser cannot open {url}: {e}"));
    }

    /// The page's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The text of the first element matching `css`, waiting for it to appear.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("no text in {css}: {e}"))
    }

    /// Waits until the first element matching `css` reads `expected` (a page that is
    /// still being replaced by the next one reads otherwise, or not at all).
    pub async fn wait_for_text(&self, css: &str, expected: &str) {
        eventually(format!("{css} reading {expected:?}"), async || {
            let found = self.client.find(Locator::Css(css)).await;
            let text = match found {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text == expected { Ok(()) } else { Err(text) }
        })
        .await;
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        tokio::time::timeout(PATIENCE, self.client.wait().for_element(Locator::Css(css)))
            .await
            .unwrap_or_else(|_| panic!("no element {css} on the page"))
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Every element matching `css` now.
    pub async fn all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("cannot look for {css}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("the field can be cleared");
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("cannot select {value:?} in {css}: {e}"));
    }

    /// Runs `script` in the page (outside its Content-Security-Policy, as WebDriver does).
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}\n{script}"))
    }

    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    /// Resizes the window (its outer size, as `--window-size` sets it).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("the window can be resized");
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session (Chromium exits) before the driver is stopped.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
        drop(self.driver);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Debian installs Chromium's launcher as /usr/bin/chromium.
fn chromium_binary() -> String {
    std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}
