//! The fleet API's OpenAPI document (`GET /v1/openapi.json`), generated
//! from the code: the routes from [`ROUTES`] (checked against the router
//! end to end: every route listed answers, none with "no such route"), the
//! role each needs from [`crate::authz::permission_of`] (the table that
//! authorizes requests, so the document cannot promise what the API
//! refuses), and the bodies' schemas from the `decnet-api` wire types
//! themselves (`utoipa::ToSchema`, derived next to the serde derives).

use std::sync::OnceLock;

use axum::http::Method;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, ObjectBuilder, Ref, Schema};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Required,
    ResponseBuilder,
};

/// A request or answer body of a route.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// No body.
    Empty,
    /// JSON of the named `decnet-api` type.
    Json(&'static str),
    /// A JSON array of the named `decnet-api` type.
    ArrayOf(&'static str),
    /// JSON not (yet) described by a wire type: what it holds.
    Document(&'static str),
    /// Bytes of this media type.
    Bytes(&'static str),
}

/// One route of the fleet API.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Its method.
    pub method: &'static str,
    /// Its path, parameters in braces.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Its query parameters (all optional).
    pub query: &'static [&'static str],
    /// The request body.
    pub request: Body,
    /// The success status and answer.
    pub answer: (u16, Body),
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Body,
    answer: (u16, Body),
) -> Route {
    Route {
        method,
        path,
        summary,
        query: &[],
        request,
        answer,
    }
}

const fn with_query(mut r: Route, query: &'static [&'static str]) -> Route {
    r.query = query;
    r
}

use Body::{ArrayOf, Bytes, Document, Empty, Json};

/// Every route of the fleet API.
pub const ROUTES: &[Route] = &[
    route(
        "GET",
        "/v1/whoami",
        "The operator, its role and host scope",
        Empty,
        (200, Json("Whoami")),
    ),
    route(
        "POST",
        "/v1/whoami/renew",
        "Renew the operator's own certificate (a CSR for a key made on its machine); the presented certificate is revoked",
        Json("RenewOperator"),
        (200, Json("RenewedOperator")),
    ),
    route(
        "GET",
        "/v1/openapi.json",
        "This document",
        Empty,
        (200, Document("the OpenAPI 3.1 document")),
    ),
    route(
        "GET",
        "/v1/hosts",
        "The hosts the operator sees",
        Empty,
        (200, ArrayOf("Host")),
    ),
    route(
        "GET",
        "/v1/hosts/{name}",
        "One host, with its revoked certificates",
        Empty,
        (200, Json("Host")),
    ),
    with_query(
        route(
            "GET",
            "/v1/audit",
            "The audit log, newest first",
            Empty,
            (200, ArrayOf("AuditRecord")),
        ),
        &["limit", "actor"],
    ),
    with_query(
        route(
            "GET",
            "/v1/status",
            "Each host's deckies, asked of its agent",
            Empty,
            (200, ArrayOf("HostReport")),
        ),
        &["host", "parallel"],
    ),
    with_query(
        route(
            "GET",
            "/v1/check",
            "Probe every host's agent and record who answered",
            Empty,
            (200, ArrayOf("HostReport")),
        ),
        &["parallel"],
    ),
    with_query(
        route(
            "GET",
            "/v1/doctor",
            "What needs attention: expiring certificates, silent hosts, clock skew, pin mismatches",
            Empty,
            (200, Document("{findings, summary}")),
        ),
        &[
            "expiry_warning_secs",
            "silent_after_secs",
            "max_skew_ms",
            "probe_parallel",
        ],
    ),
    route(
        "GET",
        "/v1/ca",
        "The CA and the master certificate (public facts)",
        Empty,
        (200, Json("CaInfo")),
    ),
    route(
        "GET",
        "/v1/hosts/{name}/releases",
        "A host's installed releases and update history",
        Empty,
        (200, Document("{releases, history}")),
    ),
    route(
        "GET",
        "/v1/hosts/{name}/evidence",
        "A host's evidence archives",
        Empty,
        (200, Json("EvidenceList")),
    ),
    route(
        "GET",
        "/v1/hosts/{name}/evidence/{decky}/{id}",
        "One evidence archive (audited)",
        Empty,
        (200, Bytes("application/gzip")),
    ),
    route(
        "POST",
        "/v1/tokens",
        "A single-use join token for a host",
        Json("NewJoinToken"),
        (200, Json("JoinToken")),
    ),
    route(
        "POST",
        "/v1/hosts/{name}/renew",
        "Ask a host to renew its certificates",
        Empty,
        (200, Json("RenewRequested")),
    ),
    route(
        "POST",
        "/v1/hosts/{name}/decommission",
        "Remove a host: its certificates revoked, its bundles deleted",
        Empty,
        (200, Json("Decommissioned")),
    ),
    route(
        "POST",
        "/v1/hosts/{name}/burn",
        "Burn a compromised host: deckies torn down, every certificate revoked",
        Empty,
        (200, Json("Burned")),
    ),
    route(
        "PUT",
        "/v1/hosts/{name}/endpoint",
        "Change where the master dials a host",
        Json("SetEndpoint"),
        (200, Json("Host")),
    ),
    route(
        "POST",
        "/v1/hosts/{name}/teardown",
        "Tear down a decky or every decky of a host (a job that answers at once; Idempotency-Key)",
        Json("TeardownRequest"),
        (200, Json("TornDown")),
    ),
    route(
        "POST",
        "/v1/hosts/{name}/rollback",
        "Restore a host's previous release (a job that answers at once; Idempotency-Key)",
        Empty,
        (200, Json("UpdateResult")),
    ),
    route(
        "POST",
        "/v1/deploy",
        "Deploy a config to hosts: a job (Idempotency-Key; 200 for a repeat, 409 when a host is held)",
        Json("DeployRequest"),
        (202, Json("Job")),
    ),
    route(
        "POST",
        "/v1/deploy/plan",
        "What each agent would run for a config (nothing runs)",
        Json("DeployPlanRequest"),
        (200, Document("[{host, plan} | {host, error}]")),
    ),
    route(
        "PUT",
        "/v1/releases/{sha256}",
        "Upload a release tarball under its SHA-256 (checked)",
        Bytes("application/gzip"),
        (201, Json("ReleaseUploaded")),
    ),
    route(
        "POST",
        "/v1/update",
        "Roll an uploaded release out: a job (Idempotency-Key)",
        Json("UpdateRequest"),
        (202, Json("Job")),
    ),
    route(
        "GET",
        "/v1/jobs",
        "The newest jobs on the operator's hosts",
        Empty,
        (200, ArrayOf("Job")),
    ),
    route(
        "GET",
        "/v1/jobs/{id}",
        "A job with per-host progress",
        Empty,
        (200, Json("Job")),
    ),
    with_query(
        route(
            "GET",
            "/v1/jobs/{id}/events",
            "A job's progress lines after `after` (long poll up to `wait_ms`)",
            Empty,
            (200, Json("JobEvents")),
        ),
        &["after", "wait_ms"],
    ),
    route(
        "POST",
        "/v1/jobs/{id}/cancel",
        "Cancel a running job",
        Empty,
        (200, Json("Job")),
    ),
    route(
        "GET",
        "/v1/operators",
        "Every operator",
        Empty,
        (200, ArrayOf("Operator")),
    ),
    route(
        "POST",
        "/v1/operators",
        "Add an operator; its one-time enrolment token",
        Json("NewOperator"),
        (201, Json("OperatorToken")),
    ),
    route(
        "GET",
        "/v1/operators/{name}",
        "One operator",
        Empty,
        (200, Json("Operator")),
    ),
    with_query(
        route(
            "POST",
            "/v1/operators/{name}/token",
            "A new enrolment token for an operator",
            Empty,
            (200, Json("OperatorToken")),
        ),
        &["ttl_secs"],
    ),
    route(
        "PUT",
        "/v1/operators/{name}/role",
        "Change an operator's role and host scope",
        Json("SetRole"),
        (200, Json("Operator")),
    ),
    route(
        "POST",
        "/v1/operators/{name}/revoke",
        "Revoke an operator and its certificates",
        Empty,
        (200, Json("Operator")),
    ),
    with_query(
        route(
            "GET",
            "/v1/events",
            "The event stream (server-sent events, each `data` an Event; resumable with Last-Event-ID; `follow=false`: the backlog, then the end)",
            Empty,
            (200, Bytes("text/event-stream")),
        ),
        &["topic", "host", "follow", "after", "limit"],
    ),
    route(
        "GET",
        "/v1/alerts",
        "The alerts (their webhooks and delivery counts)",
        Empty,
        (200, ArrayOf("AlertRule")),
    ),
    route(
        "POST",
        "/v1/alerts",
        "Add an alert; the answer carries its signing secret, once",
        Json("NewAlertRule"),
        (201, Json("AlertCreated")),
    ),
    with_query(
        route(
            "GET",
            "/v1/alerts/deliveries",
            "The alert history: what became of each delivery, newest first",
            Empty,
            (200, ArrayOf("AlertDelivery")),
        ),
        &["alert", "limit"],
    ),
    route(
        "DELETE",
        "/v1/alerts/{name}",
        "Remove an alert (its history stays)",
        Empty,
        (200, Document("{\"removed\": name}")),
    ),
    route(
        "POST",
        "/v1/alerts/{name}/test",
        "Send a test event to an alert's webhook now",
        Empty,
        (200, Json("AlertTestResult")),
    ),
    route(
        "POST",
        "/v1/console/login",
        "A one-time URL (single use, about a minute) that opens a console session as the caller",
        Empty,
        (200, Json("ConsoleLogin")),
    ),
];

/// `path` with each `{param}` filled in with `value` (what the router and
/// the authorization table match).
pub fn concrete(path: &str, value: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { value } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Who may call `r`, in words.
fn who(r: &Route) -> String {
    let method = Method::from_bytes(r.method.as_bytes()).unwrap_or(Method::GET);
    let path = concrete(r.path, "x");
    let role = decnet_api::OperatorRole::least_for(crate::authz::permission_of(&method, &path));
    if crate::authz::needs_unscoped(&path) {
        format!("Needs the {role} role, without a host scope.")
    } else {
        format!("Needs the {role} role; host names outside the operator's scope are not found.")
    }
}

fn schema_of(body: Body) -> Option<(String, utoipa::openapi::RefOr<Schema>)> {
    let json = "application/json".to_string();
    match body {
        Empty => None,
        Json(name) => Some((json, Ref::from_schema_name(name).into())),
        ArrayOf(name) => Some((
            json,
            ArrayBuilder::new()
                .items(Ref::from_schema_name(name))
                .build()
                .into(),
        )),
        Document(what) => Some((
            json,
            ObjectBuilder::new().description(Some(what)).build().into(),
        )),
        Bytes(mime) => Some((
            mime.to_string(),
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Binary,
                )))
                .build()
                .into(),
        )),
    }
}

fn method_of(m: &str) -> HttpMethod {
    match m {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// Build the document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .description(Some(who(r)))
            .operation_id(Some(format!(
                "{} {}",
                r.method.to_ascii_lowercase(),
                r.path
            )))
            .tag(r.path.split('/').nth(2).unwrap_or("v1"));
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True),
                );
            }
        }
        for q in r.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*q)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False),
            );
        }
        if let Some((mime, schema)) = schema_of(r.request) {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(mime, ContentBuilder::new().schema(Some(schema)).build())
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let mut ok = ResponseBuilder::new().description("done");
        if let Some((mime, schema)) = schema_of(r.answer.1) {
            ok = ok.content(mime, ContentBuilder::new().schema(Some(schema)).build());
        }
        op = op.response(r.answer.0.to_string(), ok.build());
        for (status, what) in [
            ("400", "a malformed request"),
            (
                "403",
                "not an operator, revoked, or the role does not allow it",
            ),
            (
                "404",
                "no such host, job or operator (or outside the scope)",
            ),
            ("409", "another job holds the host"),
            ("502", "the worker failed or did not answer"),
        ] {
            op = op.response(
                status,
                ResponseBuilder::new().description(what).content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                ),
            );
        }
        paths = paths.path(r.path, PathItem::new(method_of(r.method), op));
    }
    use decnet_api::*;
    let components = ComponentsBuilder::new()
        .schema_from::<OperatorRole>()
        .schema_from::<Host>()
        .schema_from::<AuditRecord>()
        .schema_from::<Operator>()
        .schema_from::<NewOperator>()
        .schema_from::<OperatorToken>()
        .schema_from::<SetRole>()
        .schema_from::<NewJoinToken>()
        .schema_from::<JoinToken>()
        .schema_from::<Decommissioned>()
        .schema_from::<RenewRequested>()
        .schema_from::<DeployRequest>()
        .schema_from::<Job>()
        .schema_from::<JobHost>()
        .schema_from::<JobEvents>()
        .schema_from::<JobEvent>()
        .schema_from::<Whoami>()
        .schema_from::<ErrorBody>()
        .schema_from::<TeardownRequest>()
        .schema_from::<TornDown>()
        .schema_from::<Burned>()
        .schema_from::<SetEndpoint>()
        .schema_from::<DeployPlanRequest>()
        .schema_from::<CaInfo>()
        .schema_from::<ReleaseUploaded>()
        .schema_from::<UpdateRequest>()
        .schema_from::<RenewOperator>()
        .schema_from::<RenewedOperator>()
        .schema_from::<HostReport>()
        .schema_from::<HostDeploy>()
        .schema_from::<UpdateResult>()
        .schema_from::<UpdateOutcome>()
        .schema_from::<ProbeFailure>()
        .schema_from::<AgentStatus>()
        .schema_from::<DeckyState>()
        .schema_from::<EvidenceList>()
        .schema_from::<EvidenceArchive>()
        .schema_from::<Event>()
        .schema_from::<EventTopic>()
        .schema_from::<AlertRule>()
        .schema_from::<NewAlertRule>()
        .schema_from::<AlertCreated>()
        .schema_from::<AlertDelivery>()
        .schema_from::<AlertTestResult>()
        .schema_from::<ConsoleLogin>()
        .security_scheme(
            "operator_certificate",
            SecurityScheme::MutualTls {
                description: Some(
                    "An operator certificate (CN operator@NAME) from `decnet login`".into(),
                ),
                deprecated: None,
                extensions: None,
            },
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("decnet fleet API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The master's operator API (`decnet master serve --api-port`, 8771): mutual TLS with an operator certificate; every request authorized by the operator's role and host scope.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some([SecurityRequirement::new(
            "operator_certificate",
            Vec::<String>::new(),
        )]))
        .build()
}

/// The document as served (built once).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_with_the_role_the_api_enforces() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            let d = op["description"].as_str().unwrap();
            assert!(d.starts_with("Needs the "), "{d}");
        }
        // The roles come from the authorization table itself.
        let deploy = &doc["paths"]["/v1/deploy"]["post"]["description"];
        assert!(deploy.as_str().unwrap().contains("deployer"), "{deploy}");
        let burn = &doc["paths"]["/v1/hosts/{name}/burn"]["post"]["description"];
        assert!(burn.as_str().unwrap().contains("admin"), "{burn}");
        let ops = &doc["paths"]["/v1/operators"]["get"]["description"];
        assert!(
            ops.as_str().unwrap().contains("without a host scope"),
            "{ops}"
        );
        // Every schema a route names is in the components.
        for r in ROUTES {
            for b in [r.request, r.answer.1] {
                if let Json(n) | ArrayOf(n) = b {
                    assert!(
                        doc["components"]["schemas"][n].is_object(),
                        "schema {n} missing"
                    );
                }
            }
        }
        assert!(doc["components"]["schemas"]["Host"]["properties"]["agent_port"].is_object());
    }

    #[test]
    fn each_method_and_path_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
    }
}
