//! The OpenAPI document served at `/openapi.json`, from the handlers' `utoipa::path`
//! annotations and the models' schemas.

use super::recordings;
use crate::model::{
    CreateRecording, ErrorBody, ErrorDetail, Outputs, PoolBackoff, PoolView, QueuePlace, RecipeName, Recording, RecordingPage, StatusName,
};

#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "recfleet", description = "Recordings of web meetings by a warm pool of bots. Every /v1 route takes `Authorization: Bearer <API key>`."),
    paths(recordings::create, recordings::list, recordings::get_one, recordings::stop, recordings::delete, recordings::file, recordings::pool),
    components(schemas(Recording, RecordingPage, StatusName, RecipeName, Outputs, CreateRecording, PoolView, PoolBackoff, QueuePlace, ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_documented_recipe_name_is_built_in() {
        for name in crate::model::BUILTIN_RECIPE_NAMES {
            assert!(super::recordings::builtin_recipe(name).is_some(), "{name}");
        }
    }
}
