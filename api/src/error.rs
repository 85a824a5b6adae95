//! Every failure a client can see, as a JSON body `{"error": kind, "message": text}` with the
//! right status. Internal failures never leak internals.

use warp::http::StatusCode;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The image does not exist.
    #[error("{image_type} image {id} not found")]
    ImageNotFound {
        /// Its type.
        image_type: String,
        /// Its id.
        id: i64,
    },
    /// Only GET and HEAD are served.
    #[error("method {0} not allowed; use GET or HEAD")]
    MethodNotAllowed(String),
    /// Bad path or query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// MongoDB did not answer in time.
    #[error("the image database is unavailable; retry later")]
    Unavailable,
    /// Path and query longer than `api.max_uri_bytes`.
    #[error("path and query are {0} bytes; at most {1} are accepted")]
    UriTooLong(usize, usize),
    /// Headers larger than `api.max_header_bytes`.
    #[error("headers are {0} bytes; at most {1} are accepted")]
    HeadersTooLarge(usize, usize),
    /// `api.max_concurrent_requests` are in flight.
    #[error("too many requests in flight; retry after the Retry-After delay")]
    Overloaded,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::ImageNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UriTooLong(..) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::ImageNotFound { .. } => "image_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unavailable => "unavailable",
            ApiError::UriTooLong(..) => "uri_too_long",
            ApiError::HeadersTooLarge(..) => "headers_too_large",
            ApiError::Overloaded => "overloaded",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.kind(), "message": self.to_string()})
    }
}
