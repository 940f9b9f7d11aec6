//! The chat page at `/` (`WEB_UI`): plain HTML, CSS and ES modules compiled into the binary,
//! so `cargo run` serves it with nothing else running and nothing to build at run time.
//! Every answer carries a Content-Security-Policy that allows only this origin's own files
//! (no inline script or style, no foreign origin), so that a message rendered by mistake as
//! markup still could not run.

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

/// `connect-src 'self'` covers `ws://` and `wss://` to the page's own host (CSP Level 3).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The page's files under `/assets/`, by name: content type and content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("socket.js", JS, include_str!("assets/socket.js")),
    ("view.js", JS, include_str!("assets/view.js")),
    ("chats.js", JS, include_str!("assets/chats.js")),
];
const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("assets/index.html");
/// Filled in `index.html` at start-up: whether `POST /api/dev/token` exists on this server.
const DEV_SIGN_IN_MARK: &str = "{{dev_sign_in}}";

/// `index.html` as this server serves it: the page reads from its `chatd-dev-sign-in` meta
/// whether to offer the development sign-in, since it may run no inline script to be told.
pub fn index_page(dev_sign_in: bool) -> Arc<str> {
    debug_assert!(INDEX.contains(DEV_SIGN_IN_MARK));
    Arc::from(INDEX.replace(DEV_SIGN_IN_MARK, if dev_sign_in { "on" } else { "off" }))
}

/// The page itself.
pub fn index(page: &str) -> Response {
    file("text/html; charset=utf-8", page.to_owned())
}

/// The file of the page called `name` under `/assets/`, if there is one.
pub fn asset(name: &str) -> Option<Response> {
    let (_, content_type, content) = ASSETS.iter().find(|(file, _, _)| *file == name)?;
    Some(file(content_type, (*content).to_owned()))
}

/// A file of the page with its headers: revalidated on every load (`no-cache`), since the
/// files change with the binary and carry no version in their names.
fn file(content_type: &'static str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_says_whether_the_development_sign_in_exists() {
        assert!(index_page(true).contains(r#"name="chatd-dev-sign-in" content="on""#));
        assert!(index_page(false).contains(r#"name="chatd-dev-sign-in" content="off""#));
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        for (name, _, content) in ASSETS {
            for line in content.lines().filter(|l| l.starts_with("import ")) {
                let imported = line
                    .split(['"', '\''])
                    .nth(1)
                    .and_then(|path| path.strip_prefix("./"))
                    .unwrap_or_else(|| panic!("{name}: {line}"));
                assert!(
                    ASSETS.iter().any(|(file, _, _)| *file == imported),
                    "{name} imports {imported}, which is not served"
                );
            }
        }
    }
}
