//! `GET /events` (admin; DESIGN §3.5): the stored events, so a receiver that
//! missed deliveries can catch up — oldest first by default, `after=<last
//! event id seen>` continues from there. The shape is what the SDKs'
//! `events.listEvents` reads; `events` may be comma-separated (Node) or
//! repeated (Python).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AdminKey;
use crate::api::webhooks::page_request;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, EventKind};
use crate::state::AppState;
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// The query, read by hand: serde's query parser cannot take repeated keys.
#[derive(Debug, Default)]
struct EventsQuery {
    events: Vec<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    organization_id: Option<String>,
}

fn parse_query(uri: &Uri) -> EventsQuery {
    let mut q = EventsQuery::default();
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "events" | "events[]" => {
                q.events.extend(value.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()))
            }
            "after" => q.after = Some(value),
            "before" => q.before = Some(value),
            "limit" => q.limit = Some(value),
            "order" => q.order = Some(value),
            "range_start" => q.range_start = Some(value),
            "range_end" => q.range_end = Some(value),
            "organization_id" => q.organization_id = Some(value),
            _ => {} // unknown parameters are ignored, as SDKs add new ones over time
        }
    }
    q
}

fn timestamp(field: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                ApiError::invalid_field(field, "invalid", format!("{field} must be an RFC 3339 timestamp"))
            })
        })
        .transpose()
}

async fn cursor_seq(state: &AppState, field: &str, id: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(id) = id else { return Ok(None) };
    events::seq_of(&state.db, id)
        .await?
        .map(Some)
        .ok_or_else(|| ApiError::invalid_field(field, "not_found", format!("{field} must be the id of a stored event")))
}

#[utoipa::path(get, path = "/events", tag = "webhooks", security(("api_key" = [])),
    params(("events" = Option<String>, Query, description = "event types, comma-separated or repeated"),
           ("after" = Option<String>, Query, description = "an event id: events after it"),
           ("before" = Option<String>, Query, description = "an event id: events before it"),
           ("limit" = Option<i64>, Query, description = "1 to 100, default 10"),
           ("order" = Option<String>, Query, description = "asc (default), desc or normal"),
           ("range_start" = Option<String>, Query), ("range_end" = Option<String>, Query),
           ("organization_id" = Option<String>, Query)),
    responses((status = 200, description = "A page of events"), (status = 422, description = "A bad parameter")))]
pub async fn list_events(_: AdminKey, State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let q = parse_query(&uri);
    let limit = match q.limit.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ApiError::invalid_field("limit", "invalid", "limit must be a whole number"))?,
        ),
    };
    let (limit, descending) = page_request(limit, q.order.as_deref(), false)?;
    for (i, event) in q.events.iter().enumerate() {
        if !EventKind::known(event) {
            return Err(ApiError::invalid_field(
                &format!("events[{i}]"),
                "unknown_event",
                format!("unknown event type `{event}`"),
            ));
        }
    }
    let range_start = timestamp("range_start", q.range_start.as_deref())?;
    let range_end = timestamp("range_end", q.range_end.as_deref())?;
    let after = cursor_seq(&state, "after", q.after.as_deref()).await?;
    let before = cursor_seq(&state, "before", q.before.as_deref()).await?;

    // `before` reads towards the start of the list, so it runs the other way and is reversed.
    let backwards = before.is_some();
    let ascending = descending == backwards;
    let cursor = before.or(after);
    let filter = events::Filter {
        kinds: &q.events,
        cursor,
        ascending,
        range_start,
        range_end,
        organization_id: q.organization_id.as_deref(),
    };
    let rows = events::page(&state.db, &filter, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let mut data: Vec<Value> = rows
        .into_iter()
        .take(limit as usize)
        .map(|e| {
            json!({
                "object": "event",
                "id": e.id,
                "event": EventKind::parse(&e.event).map_or(e.event.as_str(), |k| k.shown_as(&q.events)),
                "data": e.data,
                "created_at": rfc3339(e.created_at),
            })
        })
        .collect();
    if backwards {
        data.reverse();
    }
    let id_of = |v: Option<&Value>| v.and_then(|e| e["id"].as_str()).map(str::to_owned);
    let (first, last) = (id_of(data.first()), id_of(data.last()));
    let (before_cursor, after_cursor) = if backwards {
        (if more { first } else { None }, last)
    } else {
        (if cursor.is_some() { first } else { None }, if more { last } else { None })
    };
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "list_metadata": {"before": before_cursor, "after": after_cursor},
    })))
}
