//! Operations endpoints: `/metrics` counts requests and card steps by outcome, `/healthz`
//! reports the database, the calendar and CRL freshness, and every response carries a request id.

use crate::helpers::*;
use axum::http::StatusCode;
use serde_json::Value;

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_requests_and_card_steps_by_outcome() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (status, _, _) = app
        .card_step(&flow, "gca-agency", &[("institution_code", "Z9999")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = app
        .card_step(&flow, "gca-agency", &[("institution_code", TAIPEI)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = app
        .card_step(&flow, "moica-admin", &[("national_id", "A123456788")])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, headers, text) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let step = |s: &str, outcome: &str| {
        metric(
            &text,
            &format!(
                "certreg_card_steps_total{{flow=\"first_registration\",step=\"{s}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(step("org_card", "unknown_agency"), 1, "{text}");
    assert_eq!(step("org_card", "ok"), 1, "{text}");
    assert_eq!(
        step("admin_card", "id_mismatch") + step("admin_card", "invalid_input"),
        1,
        "{text}"
    );
    // Route templates, not paths: one series for every flow id.
    assert_eq!(
        metric(
            &text,
            "certreg_http_requests_total{method=\"POST\",route=\"/flows/{id}/card\",status=\"303\"}"
        ),
        1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "certreg_http_requests_total{method=\"GET\",route=\"/\",status=\"200\"}"
        ) >= 3
    );
    assert!(!text.contains(&flow), "flow ids must not become series");
    assert!(
        text.contains("certreg_http_request_duration_seconds_bucket{method=\"POST\",route=\"/flows/{id}/card\",le=\"+Inf\"} 3"),
        "{text}"
    );
    assert!(text.contains("# TYPE certreg_http_request_duration_seconds histogram"));

    let (_, _, again) = app.get("/metrics").await;
    assert_eq!(
        metric(
            &again,
            "certreg_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}"
        ),
        1,
        "the first scrape is counted by the second"
    );
}

#[tokio::test]
async fn healthz_is_200_when_fine_and_503_with_a_stale_crl() {
    let mut app = TestApp::default().await;
    let (status, headers, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !headers.contains_key("set-cookie"),
        "probes do not create sessions"
    );
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 16);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["database"]["ok"], true);
    assert_eq!(v["crls"]["ok"], true);
    let lists = v["crls"]["lists"].as_array().unwrap();
    assert_eq!(lists.len(), 5);
    assert!(
        lists
            .iter()
            .all(|l| l["stale"] == false && l["issuer"].is_string())
    );

    // A month later nobody has refreshed the CRLs: cards would be refused, so the instance
    // reports itself unavailable.
    app.clock.advance(time::Duration::days(31));
    let (status, _, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "fail");
    assert_eq!(v["crls"]["ok"], false);
    assert!(
        v["crls"]["lists"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["stale"] == true)
    );
    assert!(v["crls"]["lists"][0]["next_update"].is_string());
}

#[tokio::test]
async fn a_stale_configured_crl_is_a_warning_where_ocsp_decides() {
    // revocation = "ocsp" as `certreg serve` wires it, with the CRLs of `crls` loaded for the
    // session sweep: they do not refuse cards, so their going stale does not fail the instance.
    let validator = pki::online::wire(
        pki().trust_store().unwrap(),
        pki()
            .crl_store(
                NOW - time::Duration::hours(1),
                NOW + time::Duration::days(30),
            )
            .unwrap(),
        pki::validate::ValidationOptions::default(),
        &pki::online::RevocationSettings {
            policy: pki::online::RevocationPolicy::Ocsp,
            ..Default::default()
        },
        pki::online::Transports::default(),
    );
    let mut app =
        TestApp::with_validator(store::Backend::Sqlite, web::WebConfig::default(), validator).await;
    app.clock.advance(time::Duration::days(31));
    let (status, _, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "warn");
    assert_eq!(v["crls"]["ok"], false);
    assert_eq!(v["crls"]["stale_refuses_cards"], false);
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let mut app = TestApp::default().await;
    let (_, a, _) = app.get("/").await;
    let (status, b, _) = app.get("/no-such-page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(a["x-request-id"], b["x-request-id"]);
}
