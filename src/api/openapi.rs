//! `GET /openapi.json`: each resource registers its routes with their annotations
//! (`utoipa_axum::routes!`), so the document lists exactly the routes served.

use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::openapi_common::StandardErrors;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Pipes", description = "Connected accounts with always-fresh OAuth access tokens."),
    components(schemas(
        super::webhooks::CreateEndpoint,
        super::webhooks::UpdateEndpoint,
        super::openapi_common::ErrorBody,
        super::openapi_common::FieldErrorBody
    ))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // The widget's own API takes a widget token (`POST /widgets/token`), never an API key.
        components.add_security_scheme(
            "widget_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document of `routes`' paths, with what every path shares: the security schemes,
/// the error answers and the parameter examples.
pub fn document(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    BearerAuth.modify(&mut doc);
    StandardErrors.modify(&mut doc);
    doc
}

/// `GET /openapi.json`, serialized once.
pub fn route(doc: &utoipa::openapi::OpenApi) -> Router<AppState> {
    let body = axum::body::Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    let json = move || {
        let body = body.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
    };
    Router::new().route("/openapi.json", get(json))
}
