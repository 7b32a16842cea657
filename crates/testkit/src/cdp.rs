//! A CRL distribution point for the tests: plain HTTP on 127.0.0.1 that answers each GET with
//! the bytes the test put at its path (404 for any other path, or one status for every path
//! while the test has it fail), counting the GETs.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Served {
    files: HashMap<String, Vec<u8>>,
    failing: Option<u16>,
}

/// The server; its thread lives as long as the test process.
pub struct CrlServer {
    base: String,
    served: Arc<Mutex<Served>>,
    gets: Arc<AtomicUsize>,
}

impl CrlServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let served = Arc::new(Mutex::new(Served::default()));
        let gets = Arc::new(AtomicUsize::new(0));
        let (s, g) = (served.clone(), gets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (s, g) = (s.clone(), g.clone());
                std::thread::spawn(move || answer(&mut stream, &s, &g));
            }
        });
        Self { base, served, gets }
    }

    /// The URL of `path` (without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Serves `der` at `path` from now on.
    pub fn put(&self, path: &str, der: Vec<u8>) {
        self.lock().files.insert(format!("/{path}"), der);
    }

    /// Answers every GET with `status` (and no body) while it is set.
    pub fn fail(&self, status: Option<u16>) {
        self.lock().failing = status;
    }

    /// How many GETs came.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn answer(stream: &mut TcpStream, served: &Mutex<Served>, gets: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    gets.fetch_add(1, Ordering::SeqCst);
    let path = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let reply = {
        let served = served.lock().unwrap_or_else(|p| p.into_inner());
        match (served.failing, served.files.get(&path)) {
            (Some(status), _) => Err(status),
            (None, Some(der)) => Ok(der.clone()),
            (None, None) => Err(404),
        }
    };
    let out = match reply {
        Ok(der) => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", der.len()).into_bytes();
            out.extend_from_slice(&der);
            out
        }
        Err(status) => {
            format!("HTTP/1.1 {status} Unavailable\r\nContent-Length: 0\r\n\r\n").into_bytes()
        }
    };
    let _ = stream.write_all(&out);
}
