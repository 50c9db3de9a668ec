//! The OpenAPI document's frame; paths and schemas come from the handlers, and
//! [`ServerRules`] adds what the handlers share: the error answers every API operation can
//! give, the bearer requirement, and the enums `core::validate` enforces.

use serde_json::Value;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, ArrayBuilder, Components, Content, ObjectBuilder, RefOr, Response, Schema,
        path::Operation,
        schema::{AdditionalProperties, AnyOf, ArrayItems, SchemaType, Type},
        security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
    },
};
use utoipa_axum::router::OpenApiRouter;

use crate::core::validate;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Colloquy",
        description = "Conversation server for AI agents and human chat. Every response is \
            `{success, data}` or `{success: false, code, message, request_id, details}`.",
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "conversations"), (name = "participants"), (name = "messages"),
        (name = "intelligence", description = "summaries, analytics, search, inbox, agents"),
        (name = "webhooks", description = "webhooks and agent responders"),
        (name = "data", description = "history import, export and erasure"),
        (name = "operations"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn base() -> openapi::OpenApi {
    ApiDoc::openapi()
}

/// One resource's router with [`ServerRules`] applied to its operations and schemas.
pub fn documented<S>(mut router: OpenApiRouter<S>) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    ServerRules.modify(router.get_openapi_mut());
    router
}

/// What the handlers do not each spell out, derived from the code that enforces it.
pub struct ServerRules;

/// Answers of every `/api/` operation: the bearer check, the rate limiter, the request
/// deadline and the path/query/body extractors sit in front of every handler.
const EVERY_OPERATION: &[(&str, &str)] = &[
    (
        "400",
        "VALIDATION_ERROR: a path, query or body value breaks a documented rule",
    ),
    (
        "401",
        "UNAUTHORIZED: missing, expired or invalid bearer token",
    ),
    (
        "429",
        "RATE_LIMITED: too many requests from this principal; see `Retry-After`",
    ),
    (
        "503",
        "UNAVAILABLE: the database is unreachable or the request ran past its deadline",
    ),
];

/// Answers of operations that take a JSON body.
const WITH_BODY: &[(&str, &str)] = &[
    ("413", "PAYLOAD_TOO_LARGE: the body is larger than 1 MiB"),
    (
        "422",
        "VALIDATION_ERROR: well-formed JSON whose fields have the wrong type",
    ),
];

/// Answer of operations addressed by a path parameter.
const WITH_PATH: &[(&str, &str)] = &[(
    "404",
    "NOT_FOUND: no such resource, or one the caller may not read",
)];

/// `(schema, property, allowed values)`: string fields checked with `validate::one_of`.
const SCHEMA_ENUMS: &[(&str, &str, &[&str])] = &[
    ("CreateConversation", "platform", validate::PLATFORMS),
    (
        "NewParticipant",
        "participant_type",
        validate::PARTICIPANT_TYPES,
    ),
    ("NewParticipant", "role", validate::ROLES),
    ("SendMessage", "sender_type", validate::PARTICIPANT_TYPES),
    ("ImportMessage", "sender_type", validate::PARTICIPANT_TYPES),
];

/// `(query parameter, allowed values)`, the same name meaning the same thing everywhere.
const QUERY_ENUMS: &[(&str, &[&str])] = &[
    ("platform", validate::PLATFORMS),
    ("status", &["active", "archived"]),
    ("bucket", &["hour", "day"]),
    ("format", &["ndjson", "json"]),
];

/// Text without U+0000, which the server refuses in every string it is sent (contract §3).
const NO_NUL: &str = r"^[^\x00]*$";

/// Tags: 1 to 50 characters, not blank (`validate::tags`).
const TAG: &str =
    r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$";

/// Ids (`validate::id`): not blank, no control characters; with 1..=128 characters.
const ID: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

/// `(schema, property)` holding a list of tags.
const TAG_LISTS: &[(&str, &str)] = &[
    ("CreateConversation", "tags"),
    ("UpdateConversation", "tags"),
];

/// The name of the schema of "any JSON without U+0000": metadata, and unknown body fields.
const JSON_VALUE: &str = "JsonValue";

impl Modify for ServerRules {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let mut body_schemas = Vec::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(op, EVERY_OPERATION);
                if op.request_body.is_some() {
                    add_errors(op, WITH_BODY);
                }
                if has_path_params {
                    add_errors(op, WITH_PATH);
                }
                if op.security.is_none() {
                    op.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                }
                for param in op.parameters.iter_mut().flatten() {
                    let RefOr::T(param) = param else { continue };
                    let Some(RefOr::T(schema)) = &mut param.schema else {
                        continue;
                    };
                    if let Some((_, allowed)) = QUERY_ENUMS.iter().find(|(n, _)| *n == param.name) {
                        restrict(schema, allowed);
                    }
                    // A principal id in the path is checked like any id (`validate::id`).
                    if (param.name == "agent_id" || param.name == "user_id")
                        && let Schema::Object(id) = schema
                    {
                        id.min_length = Some(1);
                        id.max_length = Some(validate::MAX_ID_CHARS);
                        id.pattern = Some(ID.into());
                    }
                    refuse_nul(schema, &mut Vec::new());
                }
                if let Some(RefOr::T(body)) = &mut op.request_body {
                    for content in body.content.values_mut() {
                        if let RefOr::T(content) = content
                            && let Some(schema) = &mut content.schema
                        {
                            match schema {
                                RefOr::Ref(r) => body_schemas.push(schema_name(&r.ref_location)),
                                RefOr::T(schema) => refuse_nul(schema, &mut body_schemas),
                            }
                        }
                    }
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(JSON_VALUE.into(), RefOr::T(json_value()));
        walk_body_schemas(components, body_schemas);
        for (name, property) in TAG_LISTS {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name)
                && let Some(RefOr::T(Schema::Array(tags))) = object.properties.get_mut(*property)
                && let ArrayItems::RefOrSchema(items) = &mut tags.items
                && let RefOr::T(Schema::Object(item)) = items.as_mut()
            {
                item.min_length = Some(1);
                item.max_length = Some(validate::MAX_TAG_CHARS);
                item.pattern = Some(TAG.into());
            }
        }
        // A participant named by a bare id is checked like `participant_id`.
        if let Some(RefOr::T(Schema::OneOf(spec))) = components.schemas.get_mut("ParticipantSpec") {
            for item in &mut spec.items {
                if let RefOr::T(Schema::Object(id)) = item
                    && id.schema_type == SchemaType::Type(Type::String)
                {
                    id.min_length = Some(1);
                    id.max_length = Some(validate::MAX_ID_CHARS);
                    id.pattern = Some(ID.into());
                }
            }
        }
        for (name, property, allowed) in SCHEMA_ENUMS {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name)
                && let Some(RefOr::T(schema)) = object.properties.get_mut(*property)
            {
                restrict(schema, allowed);
            }
        }
    }
}

/// Applies [`refuse_nul`] to every schema reachable from a request body, once each.
fn walk_body_schemas(components: &mut Components, mut pending: Vec<String>) {
    let mut done = vec![JSON_VALUE.to_owned()];
    while let Some(name) = pending.pop() {
        if done.contains(&name) {
            continue;
        }
        if let Some(RefOr::T(schema)) = components.schemas.get_mut(&name) {
            refuse_nul(schema, &mut pending);
        }
        done.push(name);
    }
}

fn schema_name(reference: &str) -> String {
    reference.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Documents the server's refusal of U+0000: strings without a pattern get one, objects take
/// unknown properties of any NUL-free JSON. Names of referenced schemas go to `refs`.
fn refuse_nul(schema: &mut Schema, refs: &mut Vec<String>) {
    let visit = |child: &mut RefOr<Schema>, refs: &mut Vec<String>| match child {
        RefOr::Ref(r) => refs.push(schema_name(&r.ref_location)),
        RefOr::T(s) => refuse_nul(s, refs),
    };
    match schema {
        Schema::Object(object) => {
            let types = match &object.schema_type {
                SchemaType::Type(t) => vec![t.clone()],
                SchemaType::Array(ts) => ts.clone(),
                SchemaType::AnyValue => vec![],
            };
            if types.contains(&Type::String) && object.pattern.is_none() && object.format.is_none()
            {
                object.pattern = Some(NO_NUL.into());
            }
            if types.contains(&Type::Object) {
                object.additional_properties = Some(Box::new(AdditionalProperties::RefOr(
                    RefOr::Ref(openapi::Ref::from_schema_name(JSON_VALUE)),
                )));
                object.property_names = Some(Box::new(no_nul_string()));
            }
            for child in object.properties.values_mut() {
                visit(child, refs);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                visit(items, refs);
            }
        }
        Schema::OneOf(one) => one.items.iter_mut().for_each(|c| visit(c, refs)),
        Schema::AnyOf(any) => any.items.iter_mut().for_each(|c| visit(c, refs)),
        Schema::AllOf(all) => all.items.iter_mut().for_each(|c| visit(c, refs)),
        _ => {}
    }
}

fn no_nul_string() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
        .build()
        .into()
}

/// Any JSON value whose strings and keys hold no U+0000 (`validate::untrusted_json`).
fn json_value() -> Schema {
    let any = || RefOr::Ref(openapi::Ref::from_schema_name(JSON_VALUE));
    let mut object = ObjectBuilder::new().schema_type(Type::Object).build();
    object.additional_properties = Some(Box::new(AdditionalProperties::RefOr(any())));
    object.property_names = Some(Box::new(no_nul_string()));
    let mut json = AnyOf::new();
    json.items = vec![
        no_nul_string().into(),
        Schema::from(
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([
                    Type::Number,
                    Type::Boolean,
                    Type::Null,
                ]))
                .build(),
        )
        .into(),
        Schema::from(ArrayBuilder::new().items(any()).build()).into(),
        Schema::from(object).into(),
    ];
    json.description = Some("Any JSON value; no string or key may contain U+0000.".into());
    Schema::AnyOf(json)
}

fn add_errors(op: &mut Operation, errors: &[(&str, &str)]) {
    for (status, description) in errors {
        op.responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(RefOr::Ref(
            openapi::Ref::from_schema_name("ErrorBody"),
        )))),
    );
    RefOr::T(response)
}

/// Limits a string (or nullable string) schema to `allowed`; null stays allowed when it was.
fn restrict(schema: &mut Schema, allowed: &[&str]) {
    let Schema::Object(object) = schema else {
        return;
    };
    let mut values: Vec<Value> = allowed.iter().map(|v| Value::from(*v)).collect();
    if let openapi::schema::SchemaType::Array(types) = &object.schema_type
        && types.contains(&Type::Null)
    {
        values.push(Value::Null);
    }
    object.enum_values = Some(values);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AppState;

    fn spec() -> openapi::OpenApi {
        OpenApiRouter::<AppState>::with_openapi(base())
            .merge(super::super::conversations::router())
            .merge(super::super::participants::router())
            .merge(super::super::messages::router())
            .merge(super::super::insights::router())
            .merge(super::super::transfer::router())
            .into_openapi()
    }

    fn property(spec: &openapi::OpenApi, name: &str, property: &str) -> openapi::schema::Object {
        let schemas = &spec.components.as_ref().expect("components").schemas;
        let Some(RefOr::T(Schema::Object(object))) = schemas.get(name) else {
            panic!("schema {name} is gone");
        };
        match object.properties.get(property) {
            Some(RefOr::T(Schema::Object(p))) => p.clone(),
            _ => panic!("{name}.{property} is gone"),
        }
    }

    #[test]
    fn every_enum_target_exists() {
        let spec = spec();
        for (name, field, allowed) in SCHEMA_ENUMS {
            let values = property(&spec, name, field).enum_values.expect("enum");
            assert!(values.len() >= allowed.len(), "{name}.{field}");
        }
    }

    #[test]
    fn documented_lengths_are_the_enforced_ones() {
        let spec = spec();
        let max = |name, field| property(&spec, name, field).max_length;
        assert_eq!(
            max("CreateConversation", "name"),
            Some(validate::MAX_NAME_CHARS)
        );
        assert_eq!(
            max("CreateConversation", "description"),
            Some(validate::MAX_DESCRIPTION_CHARS)
        );
        assert_eq!(
            max("CreateConversation", "platform_conversation_id"),
            Some(validate::MAX_ID_CHARS)
        );
        assert_eq!(
            max("NewParticipant", "participant_id"),
            Some(validate::MAX_ID_CHARS)
        );
        assert_eq!(
            max("RegisterAgent", "agent_id"),
            Some(validate::MAX_ID_CHARS)
        );
        // `MAX_MESSAGE_CHARS` is configurable; the document states its default.
        assert_eq!(max("SendMessage", "text"), Some(10_000));
    }

    #[test]
    fn every_api_operation_documents_the_shared_errors() {
        let spec = spec();
        for (path, item) in &spec.paths.paths {
            for op in [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
            {
                for (status, _) in EVERY_OPERATION {
                    assert!(
                        op.responses.responses.contains_key(*status),
                        "{path} {status}"
                    );
                }
                assert!(op.security.is_some(), "{path}");
            }
        }
    }
}
