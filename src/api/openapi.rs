//! The OpenAPI document of the HTTP API ([`ApiDoc`]), kept in `schemas/openapi.json` (a test
//! checks that the file matches the code: `UPDATE_OPENAPI=1 cargo test openapi` rewrites it).

use utoipa::OpenApi;

use super::error::ErrorBody;
use super::portal::{
    __path_create_token, __path_statements as __path_portal_statements,
    __path_usage as __path_portal_usage, TokenRequest, TokenResponse,
};
use super::routes::entitlement::{
    __path_entitlement, __path_entitlements, AnyEntitlement, Entitlements,
};
use super::routes::health::{__path_healthz, __path_metrics, __path_readyz};
use super::routes::statements::{__path_statements, StatementsBody};
use super::routes::subscription::{__path_put_subscription, SubscriptionAccepted};
use super::routes::tenant_usage::{
    __path_usage, MeterUsageBody, PeriodBody, UsageBody, WalletBody,
};
use crate::pricing::{self, Charges};

/// The OpenAPI document of the HTTP API (`schemas/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "callmeter",
        description = "Live usage, charges, entitlements and period-close statements of a callmeter instance (CONTRACT sections 6 and 10). Decimals are JSON strings; money has 2 decimals."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        usage,
        entitlement,
        entitlements,
        statements,
        put_subscription,
        create_token,
        portal_usage,
        portal_statements
    ),
    components(schemas(
        UsageBody,
        PeriodBody,
        MeterUsageBody,
        WalletBody,
        Charges,
        pricing::ChargeLine,
        pricing::Entitlement,
        crate::features::FeatureEntitlement,
        AnyEntitlement,
        Entitlements,
        SubscriptionAccepted,
        StatementsBody,
        crate::statement::StatementBody,
        crate::statement::StatementLineBody,
        TokenRequest,
        TokenResponse,
        ErrorBody
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("One of `[api] tokens` or `[api] admin_tokens` (or CALLMETER_API__TOKENS, CALLMETER_API__ADMIN_TOKENS); writes need an admin token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "portal",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A portal token from `POST /v1/portal/tokens`: opens its tenant's portal routes only."))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as pretty JSON, with a final newline.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}
