//! The OpenAPI document's frame; paths and schemas come from the handlers.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Colloquy",
        description = "Conversation server for AI agents and human chat. Every response is \
            `{success, data}` or `{success: false, code, message, request_id, details}`.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "conversations"), (name = "participants"), (name = "messages"),
        (name = "intelligence", description = "summaries, analytics, search, inbox, agents"),
        (name = "operations"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
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

pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
