//! `pinion_http_requests_total{route,method,status}` and the
//! `pinion_http_request_duration_seconds{route}` histogram. The route is
//! the one the router matched (`/cp/admin/tokens/{name}`), or `unmatched`:
//! never the path a client sent, so a scan of made-up paths cannot make a
//! series per path. Methods outside HTTP's own set are counted as `other`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use axum::http::Method;

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Route {
    /// (method, status) → answers.
    answers: Vec<(&'static str, u16, u64)>,
    /// Answers at most each bucket's bound (not cumulative here).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Every route's counts; one short lock per answer.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<HashMap<String, Route>>,
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

impl HttpMetrics {
    /// Counts one answer.
    pub fn observe(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let method = method_label(method);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match routes.get_mut(route) {
            Some(entry) => entry,
            None => routes.entry(route.to_owned()).or_default(),
        };
        match entry
            .answers
            .iter_mut()
            .find(|(m, s, _)| *m == method && *s == status)
        {
            Some((_, _, count)) => *count += 1,
            None => entry.answers.push((method, status, 1)),
        }
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            if let Some(slot) = entry.buckets.get_mut(bucket) {
                *slot += 1;
            }
        }
        entry.count += 1;
        entry.sum += seconds;
    }

    /// The two families in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();
        out.push_str("# HELP pinion_http_requests_total HTTP requests answered, by matched route, method and status\n");
        out.push_str("# TYPE pinion_http_requests_total counter\n");
        for name in &names {
            let Some(route) = routes.get(*name) else {
                continue;
            };
            let mut answers = route.answers.clone();
            answers.sort();
            for (method, status, count) in answers {
                let _ = writeln!(
                    out,
                    "pinion_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}",
                    escape(name)
                );
            }
        }
        out.push_str("# HELP pinion_http_request_duration_seconds Time from routing a request to its answer's head, by matched route\n");
        out.push_str("# TYPE pinion_http_request_duration_seconds histogram\n");
        for name in &names {
            let Some(route) = routes.get(*name) else {
                continue;
            };
            let label = escape(name);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(route.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "pinion_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "pinion_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"+Inf\"}} {}",
                route.count
            );
            let _ = writeln!(
                out,
                "pinion_http_request_duration_seconds_sum{{route=\"{label}\"}} {}",
                route.sum
            );
            let _ = writeln!(
                out,
                "pinion_http_request_duration_seconds_count{{route=\"{label}\"}} {}",
                route.count
            );
        }
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_method_and_status_with_cumulative_buckets() {
        let metrics = HttpMetrics::default();
        metrics.observe("/cp/fleet", &Method::GET, 200, 0.0002);
        metrics.observe("/cp/fleet", &Method::GET, 200, 0.02);
        metrics.observe("/cp/fleet", &Method::GET, 401, 60.0);
        metrics.observe(
            "unmatched",
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            0.001,
        );
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains(
                "pinion_http_requests_total{route=\"/cp/fleet\",method=\"GET\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "pinion_http_requests_total{route=\"/cp/fleet\",method=\"GET\",status=\"401\"} 1\n"
        ));
        assert!(text.contains(
            "pinion_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1\n"
        ));
        assert!(text.contains(
            "pinion_http_request_duration_seconds_bucket{route=\"/cp/fleet\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "pinion_http_request_duration_seconds_bucket{route=\"/cp/fleet\",le=\"0.025\"} 2\n"
        ));
        assert!(text.contains(
            "pinion_http_request_duration_seconds_bucket{route=\"/cp/fleet\",le=\"30\"} 2\n"
        ));
        assert!(text.contains(
            "pinion_http_request_duration_seconds_bucket{route=\"/cp/fleet\",le=\"+Inf\"} 3\n"
        ));
        assert!(
            text.contains("pinion_http_request_duration_seconds_count{route=\"/cp/fleet\"} 3\n")
        );
    }
}
