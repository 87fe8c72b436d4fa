//! The Prometheus HTTP API's JSON envelope and the data shapes of the metadata
//! endpoints, so Grafana and other Prometheus clients read Argus as they read
//! Prometheus.
//!
//! ```text
//! {"status":"success","data":...,"warnings":[...]}
//! {"status":"error","errorType":"bad_data","error":"..."}
//! ```
//!
//! `warnings` and `infos` are left out when empty, and `data` when absent, as
//! Prometheus's `omitempty` does. Error types and their status codes follow
//! Prometheus's `respondError`, except `unavailable`, which Prometheus answers with
//! 500: a node that is not ready or has no leader answers 503, so load balancers and
//! clients retry elsewhere.

use argus_common::model::{Labels, MetricType};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use std::collections::BTreeMap;

/// `errorType` values as Prometheus uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// A parameter is missing or malformed: 400.
    BadData,
    /// The query could not be executed: 422.
    Execution,
    /// The query timed out: 503.
    Timeout,
    /// The client went away: 499 (nginx's code, which Prometheus uses too).
    Canceled,
    /// A bug or storage failure: 500.
    Internal,
    /// Not ready, or no leader to serve the request: 503.
    Unavailable,
    /// No such thing: 404.
    NotFound,
    /// No acceptable response format: 406.
    NotAcceptable,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
            ErrorType::NotAcceptable => "not_acceptable",
        }
    }

    /// The HTTP status Prometheus pairs with this error type.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // 499 is in range, so this never falls back.
            ErrorType::Canceled => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Success,
    Error,
}

/// A complete API response. Build it with [`ApiResponse::success`] or from an
/// [`ApiError`]; axum turns it into the status code and JSON body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResponse<T> {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_type: Option<ErrorType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    infos: Vec<String>,
}

impl<T> ApiResponse<T> {
    pub fn success(data: T) -> Self {
        ApiResponse {
            status: Status::Success,
            data: Some(data),
            error_type: None,
            error: None,
            warnings: Vec::new(),
            infos: Vec::new(),
        }
    }

    /// Adds a warning (e.g. "results truncated to the limit of N").
    pub fn with_warning(mut self, w: impl Into<String>) -> Self {
        self.warnings.push(w.into());
        self
    }

    /// Adds an info annotation.
    pub fn with_info(mut self, i: impl Into<String>) -> Self {
        self.infos.push(i.into());
        self
    }

    /// The HTTP status this response is sent with.
    pub fn status_code(&self) -> StatusCode {
        match self.error_type {
            Some(t) => t.status(),
            None => StatusCode::OK,
        }
    }
}

impl<T: Serialize> ApiResponse<T> {
    /// The JSON body.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

impl<T: Serialize> IntoResponse for ApiResponse<T> {
    fn into_response(self) -> Response {
        match self.to_json() {
            Ok(body) => (
                self.status_code(),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "serialising an API response");
                let fallback = ApiError::internal(format!("serialising the response: {e}"));
                let body = serde_json::to_string(&ApiResponse::<()>::from(fallback))
                    .unwrap_or_else(|_| {
                        String::from(
                            r#"{"status":"error","errorType":"internal","error":"serialisation"}"#,
                        )
                    });
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response()
            }
        }
    }
}

/// An error answer: its type decides the status code, its message names what was
/// wrong (the parameter and the problem), as DESIGN §3.4 asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_data(message: impl Into<String>) -> Self {
        Self::new(ErrorType::BadData, message)
    }

    pub fn execution(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Execution, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unavailable, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFound, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Timeout, message)
    }

    pub fn canceled(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Canceled, message)
    }
}

impl<T> From<ApiError> for ApiResponse<T> {
    fn from(e: ApiError) -> Self {
        ApiResponse {
            status: Status::Error,
            data: None,
            error_type: Some(e.kind),
            error: Some(e.message),
            warnings: Vec::new(),
            infos: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiResponse::<()>::from(self).into_response()
    }
}

/// One series as `/api/v1/series` lists it: a JSON object of its labels with
/// `__name__` among them, keys in byte order as Prometheus writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabels {
    pub name: String,
    pub labels: Labels,
}

impl Serialize for SeriesLabels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const NAME: &str = "__name__";
        let mut map = serializer.serialize_map(Some(self.labels.len() + 1))?;
        let mut name_written = false;
        for (k, v) in self.labels.iter() {
            // `__name__` is not in `labels`; slot it in where byte order puts it
            // (after upper-case names, before lower-case ones).
            if !name_written && k > NAME {
                map.serialize_entry(NAME, &self.name)?;
                name_written = true;
            }
            map.serialize_entry(k, v)?;
        }
        if !name_written {
            map.serialize_entry(NAME, &self.name)?;
        }
        map.end()
    }
}

/// `data` of `/api/v1/series`.
pub type SeriesData = Vec<SeriesLabels>;

/// `data` of `/api/v1/labels` and `/api/v1/label/<name>/values`: sorted strings.
pub type StringList = Vec<String>;

/// One entry of `/api/v1/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub help: String,
    pub unit: String,
}

impl MetadataEntry {
    pub fn new(kind: MetricType, help: impl Into<String>, unit: impl Into<String>) -> Self {
        MetadataEntry {
            kind: metadata_type_name(kind),
            help: help.into(),
            unit: unit.into(),
        }
    }
}

/// `data` of `/api/v1/metadata`: metric name to its distinct metadata, sorted by
/// name (a BTreeMap) so the JSON is deterministic.
pub type MetadataData = BTreeMap<String, Vec<MetadataEntry>>;

/// The type word of the metadata API, which (unlike text format 0.0.4) knows `info`
/// and says `unknown` rather than `untyped`.
pub fn metadata_type_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        MetricType::Summary => "summary",
        MetricType::Info => "info",
        MetricType::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    fn json<T: Serialize>(r: &ApiResponse<T>) -> String {
        r.to_json().unwrap()
    }

    #[test]
    fn success_envelope() {
        let r = ApiResponse::success(vec!["__name__".to_string(), "job".to_string()]);
        assert_eq!(
            json(&r),
            r#"{"status":"success","data":["__name__","job"]}"#
        );
        assert_eq!(r.status_code(), StatusCode::OK);
        let empty: StringList = Vec::new();
        assert_eq!(
            json(&ApiResponse::success(empty)),
            r#"{"status":"success","data":[]}"#,
            "an empty list is still data"
        );
        let r = ApiResponse::success(vec!["a".to_string()])
            .with_warning("results truncated")
            .with_info("note");
        assert_eq!(
            json(&r),
            r#"{"status":"success","data":["a"],"warnings":["results truncated"],"infos":["note"]}"#
        );
    }

    #[test]
    fn error_envelope_and_status_codes() {
        let r: ApiResponse<()> =
            ApiError::bad_data("invalid parameter \"match[]\": position 3: x").into();
        assert_eq!(
            json(&r),
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"match[]\": position 3: x"}"#
        );
        let cases = [
            (ErrorType::BadData, "bad_data", 400),
            (ErrorType::Execution, "execution", 422),
            (ErrorType::Timeout, "timeout", 503),
            (ErrorType::Canceled, "canceled", 499),
            (ErrorType::Internal, "internal", 500),
            (ErrorType::Unavailable, "unavailable", 503),
            (ErrorType::NotFound, "not_found", 404),
            (ErrorType::NotAcceptable, "not_acceptable", 406),
        ];
        for (t, name, code) in cases {
            let r: ApiResponse<()> = ApiError::new(t, "m").into();
            assert_eq!(r.status_code().as_u16(), code, "{name}");
            assert_eq!(t.as_str(), name);
            assert_eq!(
                json(&r),
                format!(r#"{{"status":"error","errorType":"{name}","error":"m"}}"#)
            );
        }
    }

    #[test]
    fn series_objects_include_the_name_in_byte_order() {
        let data: SeriesData = vec![
            SeriesLabels {
                name: "up".into(),
                labels: Labels::from_pairs([("job", "node"), ("Zone", "eu"), ("instance", "h:1")]),
            },
            SeriesLabels {
                name: "x".into(),
                labels: Labels::new(),
            },
            SeriesLabels {
                name: "y".into(),
                labels: Labels::from_pairs([("A", "1")]),
            },
        ];
        assert_eq!(
            json(&ApiResponse::success(data)),
            r#"{"status":"success","data":[{"Zone":"eu","__name__":"up","instance":"h:1","job":"node"},{"__name__":"x"},{"A":"1","__name__":"y"}]}"#
        );
    }

    #[test]
    fn metadata_shape() {
        let mut data = MetadataData::new();
        data.insert(
            "http_requests_total".into(),
            vec![MetadataEntry::new(MetricType::Counter, "Requests.", "")],
        );
        data.insert(
            "node_uname_info".into(),
            vec![MetadataEntry::new(MetricType::Info, "Kernel.", "")],
        );
        data.insert(
            "go_gc_duration_seconds".into(),
            vec![MetadataEntry::new(MetricType::Summary, "GC.", "seconds")],
        );
        assert_eq!(
            json(&ApiResponse::success(data)),
            concat!(
                r#"{"status":"success","data":{"#,
                r#""go_gc_duration_seconds":[{"type":"summary","help":"GC.","unit":"seconds"}],"#,
                r#""http_requests_total":[{"type":"counter","help":"Requests.","unit":""}],"#,
                r#""node_uname_info":[{"type":"info","help":"Kernel.","unit":""}]}}"#
            )
        );
        assert_eq!(metadata_type_name(MetricType::Unknown), "unknown");
    }

    #[tokio::test]
    async fn into_response_sets_status_and_content_type() {
        let resp = ApiError::not_found("no such label").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert_eq!(
            &body[..],
            br#"{"status":"error","errorType":"not_found","error":"no such label"}"#
        );
        let resp = ApiResponse::success(vec!["v".to_string()]).into_response();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], br#"{"status":"success","data":["v"]}"#);
    }
}
