//! The OpenAPI 3 description of every route, served at `/openapi.json`.

use leafsync_core::ImageType;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document() -> Value {
    let types: Vec<&str> = ImageType::ALL.map(ImageType::as_str).to_vec();
    let image_type = json!({"name": "image_type", "in": "path", "required": true,
        "description": "Image type", "schema": {"type": "string", "enum": types}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "leafsync API", "version": env!("CARGO_PKG_VERSION"),
            "description": "Read service over leafsync's consumer image database."},
        "paths": {
            "/image-plant/{image_type}/{image_id}": {"get": {
                "operationId": "getImage",
                "summary": "One image, soft-deleted ones included (see `deleted`)",
                "parameters": [image_type, {"name": "image_id", "in": "path", "required": true,
                    "schema": {"type": "integer", "format": "int64", "minimum": 1}}],
                "responses": {
                    "200": {"description": "The image", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Image"}}}},
                    "400": error_response("Unknown image type or invalid id"),
                    "404": error_response("No such image"),
                    "414": error_response("Path and query longer than api.max_uri_bytes"),
                    "431": error_response("Headers larger than api.max_header_bytes"),
                    "503": error_response("Database unavailable, or overloaded (api.max_concurrent_requests; see Retry-After)"),
                }
            }},
            "/image-plant/{image_type}/total": {"get": {
                "operationId": "countImages",
                "summary": "How many images of a type exist (soft-deleted excluded unless asked)",
                "parameters": [image_type, {"name": "include_deleted", "in": "query", "required": false,
                    "schema": {"type": "boolean", "default": false}}],
                "responses": {
                    "200": {"description": "The count (at most api.total_cache_ttl_ms + 10 s old; exact when the TTL is 0)",
                        "content": {"application/json": {"schema": {"type": "integer", "minimum": 0}}}},
                    "400": error_response("Unknown image type or bad query"),
                    "414": error_response("Path and query longer than api.max_uri_bytes"),
                    "431": error_response("Headers larger than api.max_header_bytes"),
                    "503": error_response("Database unavailable, or overloaded (api.max_concurrent_requests; see Retry-After)"),
                }
            }},
            "/live": {"get": {"operationId": "live", "summary": "Liveness",
                "responses": {"200": {"description": "Serving", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/ready": {"get": {"operationId": "ready", "summary": "Readiness: MongoDB answers",
                "responses": {
                    "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                    "503": {"description": "Not ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": {
            "Image": {"type": "object", "required": ["id", "updated_at", "deleted"], "additionalProperties": true,
                "properties": {
                    "id": {"type": "integer", "format": "int64", "minimum": 1},
                    "name": {"type": "string"}, "url": {"type": "string"},
                    "size": {"type": "integer", "minimum": 0}, "width": {"type": "integer", "minimum": 0},
                    "height": {"type": "integer", "minimum": 0}, "label": {"type": "string"},
                    "user_id": {"type": "integer", "minimum": 0}, "deleted": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"}}},
            "Error": {"type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "Status": {"type": "object", "required": ["status"],
                "properties": {"status": {"type": "string"}, "database": {"type": "boolean"}}},
        }}
    })
}
