//! `/openapi.json` describes what the token routes really answer: one 200
//! whose schema is a `oneOf` of the active shape and `Inactive`, told apart
//! by `active`, and every real answer of either kind validates against it.

use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::{json, Value};

use super::HOUR;
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

/// Follows `{"$ref": "#/components/schemas/X"}` (repeatedly) to the schema it names.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("ref {reference}"));
        schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "{reference} is not in components");
    }
    schema
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// The JSON Schema keywords the document uses, checked strictly; any other
/// keyword fails the test rather than being silently ignored. Returns the
/// problems found at `path`.
fn validate(doc: &Value, schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut problems = Vec::new();
    let Some(keywords) = schema.as_object() else { panic!("schema at {path} is not an object: {schema}") };
    for (keyword, rule) in keywords {
        match keyword.as_str() {
            "description" | "examples" | "format" | "title" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => panic!("type {rule}"),
                };
                if !types.iter().any(|t| type_matches(t, value)) {
                    problems.push(format!("{path}: {value} is not of type {rule}"));
                }
            }
            "enum" => {
                if !rule.as_array().is_some_and(|allowed| allowed.contains(value)) {
                    problems.push(format!("{path}: {value} is not one of {rule}"));
                }
            }
            "required" => {
                for field in rule.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if value.is_object() && value.get(field).is_none() {
                        problems.push(format!("{path}: `{field}` is missing"));
                    }
                }
            }
            "properties" => {
                for (field, sub) in rule.as_object().into_iter().flatten() {
                    if let Some(v) = value.get(field) {
                        problems.extend(validate(doc, sub, v, &format!("{path}.{field}")));
                    }
                }
            }
            "additionalProperties" => {
                let known = keywords.get("properties").and_then(Value::as_object);
                for (field, v) in value.as_object().into_iter().flatten() {
                    if known.is_some_and(|k| k.contains_key(field)) {
                        continue;
                    }
                    match rule {
                        Value::Bool(true) => {}
                        Value::Bool(false) => problems.push(format!("{path}: unexpected field `{field}`")),
                        sub => problems.extend(validate(doc, sub, v, &format!("{path}.{field}"))),
                    }
                }
            }
            "propertyNames" => {
                for field in value.as_object().into_iter().flatten().map(|(k, _)| k) {
                    problems.extend(validate(doc, rule, &json!(field), &format!("{path}[{field}]")));
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    problems.extend(validate(doc, rule, item, &format!("{path}[{i}]")));
                }
            }
            "oneOf" => {
                let branches = rule.as_array().expect("oneOf is a list");
                let matching = branches.iter().filter(|b| validate(doc, b, value, path).is_empty()).count();
                if matching != 1 {
                    problems.push(format!("{path}: {value} matches {matching} of the oneOf branches, not exactly one"));
                }
            }
            other => panic!("the validator does not know `{other}` (at {path}); extend it"),
        }
    }
    problems
}

/// The schema of the one 200 answer of `POST path`.
fn ok_schema<'a>(doc: &'a Value, path: &str) -> &'a Value {
    let response = &doc["paths"][path]["post"]["responses"]["200"];
    assert!(response.is_object(), "{path} documents no 200");
    &response["content"]["application/json"]["schema"]
}

/// The `active` value each branch of the 200's `oneOf` admits, with the
/// fields it requires.
fn branches(doc: &Value, path: &str) -> Vec<(Value, Value)> {
    let schema = resolve(doc, ok_schema(doc, path));
    let one_of = schema["oneOf"].as_array().unwrap_or_else(|| panic!("{path}: the 200 is not a oneOf: {schema}"));
    one_of
        .iter()
        .map(|branch| {
            let branch = resolve(doc, branch);
            (branch["properties"]["active"]["enum"].clone(), branch["required"].clone())
        })
        .collect()
}

#[tokio::test]
async fn each_token_route_documents_one_200_that_is_either_shape_and_real_answers_validate() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let token = "/data-integrations/{slug}/token";
    let credentials = "/data-integrations/{slug}/credentials";
    assert_eq!(
        branches(&doc, token),
        [(json!([true]), json!(["active", "access_token"])), (json!([false]), json!(["active", "error"]))]
    );
    assert_eq!(
        branches(&doc, credentials),
        [(json!([true]), json!(["active", "credential"])), (json!([false]), json!(["active", "error"]))]
    );

    let p = demo_integration(&app, "tk-schema", ClientAuthMethod::Basic).await;
    seed_account(&app, &p, "u1", None, HOUR).await;
    let (_, revoked) = seed_account(&app, &p, "u2", None, Duration::from_secs(5)).await;
    assert!(p.demo.revoke_grant_of(&revoked));
    let key = app.tokens_key.clone();
    for (path, field) in [(token, "access_token"), (credentials, "credential")] {
        let schema = ok_schema(&doc, path);
        let url = path.replace("{slug}", "tk-schema");
        let mut seen = Vec::new();
        for user in ["u1", "ghost", "u2"] {
            let (status, answer) = app.call(Method::POST, &url, Some(&key), Some(json!({"user_id": user}))).await;
            assert_eq!(status, 200, "{answer}");
            let problems = validate(&doc, schema, &answer, "$");
            assert!(problems.is_empty(), "{path} for {user}: {problems:?}");
            seen.push(if answer["active"] == true { field.to_owned() } else { answer["error"].to_string() });
        }
        assert_eq!(seen, [field, "\"not_installed\"", "\"needs_reauthorization\""], "{path}");
        // The branches exclude each other: a mixed-up answer matches neither.
        let (_, active) = app.call(Method::POST, &url, Some(&key), Some(json!({"user_id": "u1"}))).await;
        let mut wrong_flag = active.clone();
        wrong_flag["active"] = json!(false);
        assert!(!validate(&doc, schema, &wrong_flag, "$").is_empty(), "{path}: active body with active=false");
        let inactive_but_true = json!({"active": true, "error": "not_installed"});
        assert!(!validate(&doc, schema, &inactive_but_true, "$").is_empty(), "{path}: error body with active=true");
        let unknown_reason = json!({"active": false, "error": "sleeping"});
        assert!(!validate(&doc, schema, &unknown_reason, "$").is_empty(), "{path}: undocumented reason");
    }
}
