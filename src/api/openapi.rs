//! `GET /openapi.json`, generated from the handlers' annotations so it cannot
//! drift from the code.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::openapi_common::StandardErrors;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Pipes", description = "Connected accounts with always-fresh OAuth access tokens."),
    paths(
        super::health::live,
        super::health::ready,
        super::health::metrics,
        super::integrations::list,
        super::integrations::create,
        super::integrations::show,
        super::integrations::update,
        super::integrations::remove,
        super::connect::authorize,
        super::connect::callback,
        super::connected_accounts::show,
        super::connected_accounts::import,
        super::connected_accounts::replace,
        super::connected_accounts::disconnect,
        super::connected_accounts::data_providers,
        super::tokens::token,
        super::tokens::credentials,
        super::webhooks::create_endpoint,
        super::webhooks::list_endpoints,
        super::webhooks::update_endpoint,
        super::webhooks::delete_endpoint,
        super::events::list_events,
        super::widget::create_token,
        super::widget::providers,
        super::widget::authorize,
        super::widget::disconnect,
    ),
    components(schemas(super::webhooks::CreateEndpoint, super::webhooks::UpdateEndpoint,
        super::openapi_common::ErrorBody, super::openapi_common::FieldErrorBody)),
    modifiers(&BearerAuth, &StandardErrors)
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

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
