//! The page's headers keep it to itself: a Content-Security-Policy that allows only its own
//! inline script and style, by a hash recomputed here from the body, and WebSockets to its
//! own origin; no framing, no sniffing, no referrer.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use testkit::http::{Response, exchange, get};
use testkit::{Endpoint, InProcess};

use super::shared_machine;

/// The bodies of every `<tag ...>…</tag>` in `page`, with the attributes of each opening tag.
fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut blocks = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end_of_tag) = after.find('>') else {
            break;
        };
        let attributes = &after[..end_of_tag];
        let body = &after[end_of_tag + 1..];
        let Some(end) = body.find(&close) else {
            break;
        };
        blocks.push((attributes, &body[..end]));
        rest = &body[end + close.len()..];
    }
    blocks
}

fn sha256_source(text: &str) -> String {
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

fn directives(policy: &str) -> HashMap<&str, Vec<&str>> {
    policy
        .split(';')
        .filter_map(|directive| {
            let mut words = directive.split_whitespace();
            Some((words.next()?, words.collect()))
        })
        .collect()
}

fn assert_page_headers(response: &Response, body: &str) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(response.header("x-frame-options"), Some("DENY"));
    assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
    let policy = response
        .header("content-security-policy")
        .expect("a Content-Security-Policy");
    let policy = directives(policy);
    let only = |name: &str, value: &[&str]| {
        assert_eq!(policy.get(name).map(Vec::as_slice), Some(value), "{name}");
    };
    only("default-src", &["'none'"]);
    only("connect-src", &["'self'"]);
    only("frame-ancestors", &["'none'"]);
    only("base-uri", &["'none'"]);
    only("form-action", &["'none'"]);
    for (tag, directive) in [("script", "script-src"), ("style", "style-src")] {
        let blocks = inline_blocks(body, tag);
        assert!(!blocks.is_empty(), "the page has an inline {tag}");
        let hashes: Vec<String> = blocks
            .iter()
            .map(|(attributes, text)| {
                assert!(!attributes.contains("src="), "an external {tag}");
                sha256_source(text)
            })
            .collect();
        let allowed = &policy[directive];
        assert_eq!(
            allowed.len(),
            hashes.len(),
            "{directive} {allowed:?} names exactly the page's inline {tag}s"
        );
        for hash in &hashes {
            assert!(
                allowed.contains(&hash.as_str()),
                "{directive} {allowed:?} lacks {hash}"
            );
        }
    }
    let all = policy.values().flatten().copied().collect::<Vec<_>>();
    assert!(!all.contains(&"'unsafe-inline'") && !all.contains(&"'unsafe-eval'"));
    // Inline event handlers would be blocked by this policy, so the page must have none.
    let lower = body.to_ascii_lowercase();
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " oninput=",
        " onerror=",
    ] {
        assert!(!lower.contains(handler), "the page uses{handler}");
    }
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_matches_its_inline_script_and_style() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    for path in ["/", "/chat/lobby/", "/chat/lobby"] {
        let response = get(server.addr(), path).await;
        assert_page_headers(&response, &response.text());
    }
    let full = get(server.addr(), "/").await;
    let head = exchange(
        server.addr(),
        b"HEAD / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.body.is_empty());
    assert_page_headers(&head, &full.text());
}
