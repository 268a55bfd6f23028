//! What every operation of `/openapi.json` shares, added in one place rather
//! than repeated on each handler: examples for the common path parameters
//! (clients and API fuzzers then reach real rows), and the error answers
//! every JSON route can give: 400 (malformed JSON or
//! query, or a path that is not UTF-8 text), 401/403 (key missing, wrong or of the wrong role), 404 (a path
//! names nothing), 422 (field errors), each as `ErrorBody`. A 4xx that a
//! handler documents with a description only gets the same body. Browser
//! routes (the OAuth callback) answer pages and are left as documented.

use serde_json::json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema};
use utoipa::{Modify, ToSchema};

/// Every error answer: `{"code", "message"}`, plus `errors` on a 422.
#[derive(ToSchema)]
#[allow(dead_code)] // Only describes the wire shape written by `crate::error`.
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `integration_not_found`.
    code: String,
    /// What was wrong, for a person.
    message: String,
    /// The fields that failed validation (422 only).
    errors: Option<Vec<FieldErrorBody>>,
}

/// One field of a 422.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldErrorBody {
    /// The field's path in the body, e.g. `custom_provider.token_url`.
    field: String,
    /// `required`, `invalid`, …
    code: String,
    message: Option<String>,
}

/// Paths whose answers are HTML pages for a browser, never JSON errors.
const BROWSER_PATHS: &[&str] = &["/data-integrations/{slug}/callback"];

pub struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let browser = BROWSER_PATHS.contains(&path.as_str());
            for op in
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
            {
                add_examples(op);
                if !browser {
                    add_errors(op);
                }
            }
        }
    }
}

/// Example values of the path parameters most routes take.
const PATH_EXAMPLES: &[(&str, &str)] = &[("slug", "github"), ("user_id", "user_123")];

fn add_examples(op: &mut Operation) {
    // Parameters the annotations declare inline (a `$ref` names a shared one, left alone).
    for param in op.parameters.iter_mut().flatten().filter_map(|p| match p {
        RefOr::T(param) => Some(param),
        RefOr::Ref(_) => None,
    }) {
        let Some(example) = PATH_EXAMPLES.iter().find(|(name, _)| *name == param.name).map(|(_, e)| *e) else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(schema))) = param.schema.as_mut() {
            if schema.examples.is_empty() {
                schema.examples.push(json!(example));
            }
        }
    }
}

fn error_response(description: &str) -> Response {
    let content = ContentBuilder::new().schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))).build();
    ResponseBuilder::new().description(description).content("application/json", content).build()
}

fn add_errors(op: &mut Operation) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let located = |at: ParameterIn| params.iter().any(|p| matches!(p, RefOr::T(p) if p.parameter_in == at));
    let (has_path, has_query) = (located(ParameterIn::Path), located(ParameterIn::Query));
    let has_body = op.request_body.is_some();
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    if has_body || has_query || has_path {
        wanted.push(("400", "Malformed JSON body, query or path"));
        wanted.push(("422", "Field errors (body, query or path values)"));
    }
    if secured {
        wanted.push(("401", "Missing or unknown API key"));
        wanted.push(("403", "This key's role may not do this"));
    }
    if has_path {
        wanted.push(("404", "Nothing at this path"));
    }
    let responses = &mut op.responses.responses;
    for (status, description) in wanted {
        responses.entry(status.to_owned()).or_insert_with(|| RefOr::T(error_response(description)));
    }
    // Documented 4xx answers without a body schema are error bodies too.
    for (status, response) in responses.iter_mut() {
        if !status.starts_with('4') {
            continue;
        }
        if let RefOr::T(r) = response {
            if r.content.is_empty() {
                *r = error_response(&r.description);
            }
        }
    }
}
