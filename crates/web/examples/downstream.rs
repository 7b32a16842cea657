//! What a downstream service (加保, 退保 …) does with an operator's token from certreg: fetch
//! certreg's published keys, verify the token with them (here with the `jsonwebtoken` crate),
//! check issuer and expiry, and ask certreg whether the session behind it is still active.
//!
//! ```text
//! cargo run -p web --example downstream -- <certreg url> <token> [issuer] [audience]
//! ```
//!
//! `issuer` defaults to the URL (certreg's public origin), `audience` (this system's name, the
//! token's `aud`) to `certreg-downstream`. Plain `http://` only — a real service
//! reaches certreg over https with its usual HTTP client; this example keeps to a few lines of
//! HTTP/1.1 on a socket so as to need nothing beyond tokio. See docs/downstream.md.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, rest @ ..] = args.as_slice() else {
        eprintln!("usage: downstream <certreg url> <token> [issuer] [audience]");
        std::process::exit(2);
    };
    let base = url.trim_end_matches('/');
    let issuer = rest.first().map_or(base, String::as_str);
    let audience = rest.get(1).map_or("certreg-downstream", String::as_str);

    // 1. The published keys (cache them; fetch again when a token names an unknown kid).
    let jwks: JwkSet =
        serde_json::from_slice(&http(base, "GET", "/.well-known/jwks.json", None).await?)?;

    // 2. The key the token's header names, ES256 only (never trust the header's alg alone).
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.ok_or("the token names no key (kid)")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("key {kid} is not published by {base}"))?;
    let key = DecodingKey::from_jwk(jwk)?;

    // 3. Signature, issuer, audience and expiry.
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)?.claims;
    println!("verified (key {kid}):");
    println!("{}", serde_json::to_string_pretty(&claims)?);

    // 4. Optionally: is the operator's session still live, with the same grant?
    let body = serde_json::json!({ "token": token, "audience": audience }).to_string();
    let answer: Value =
        serde_json::from_slice(&http(base, "POST", "/api/v1/introspect", Some(&body)).await?)?;
    let active = answer["active"].as_bool().unwrap_or(false);
    println!(
        "introspection: {}",
        if active { "active" } else { "inactive" }
    );
    if !active {
        std::process::exit(1);
    }
    Ok(())
}

/// One HTTP/1.1 request over a fresh connection; the response body.
async fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, Error> {
    let authority = base
        .strip_prefix("http://")
        .ok_or("only http:// URLs in this example")?;
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&host_port).await?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let payload = response[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{method} {path}: HTTP {status}").into());
    }
    if head.contains("transfer-encoding: chunked") {
        return dechunk(&payload);
    }
    Ok(payload)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..line]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("short chunk")?;
    }
}
