//! The admin API's OpenAPI document (`GET /admin/openapi.json`): it is OpenAPI 3, behind the
//! admin token like every admin route; it lists exactly the routes the server registers (the
//! table `http::admin_routes()` that actix is built from, each of which the server answers);
//! every operation documents its 401 with the error body and requires the bearer token; and
//! real answers read into the typed structs of `http::api` losing nothing, and carry every
//! field the document marks required.

use std::collections::BTreeSet;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admin_identity::{app, seed_dead_letters};
use crate::support::*;
use zulip_listeners::http::admin_routes;
use zulip_listeners::http::api::{
    DeadLetter, DeadLetterAction, DeadLetterList, EventsPage, InboxEvents, ListenerDetail,
    ListenerList, ListenerState, Requeued, Stats,
};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The (method, path) pairs the document lists.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// A path of the table with its placeholders filled: listener `pinger`, dead letter `dead-0`.
fn concrete(path: &str) -> String {
    path.replace("{name}", "pinger")
        .replace("{field}", "description")
        .replace("{action}", "enable")
        .replace("{id}", "dead-0")
}

/// The keys a schema (a `$ref`, an `allOf` of them, or an object) requires.
fn required(doc: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return required(doc, &doc["components"]["schemas"][name]);
    }
    let mut keys: BTreeSet<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        keys.extend(required(doc, part));
    }
    keys
}

/// Every `$ref` anywhere in `value`.
fn references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                out.insert(target.clone());
            }
            map.values().for_each(|v| references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// Reads a 200 answer of `GET path` into `T`, checks that `T` gives back the very same JSON
/// (no key lost or added), and that it has every key the document requires.
async fn typed<T: DeserializeOwned + serde::Serialize>(
    t: &TestServer,
    doc: &Value,
    path: &str,
) -> T {
    let answer = t.send(t.admin(Method::GET, path)).await;
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.json);
    let value: T = serde_json::from_value(answer.json.clone())
        .unwrap_or_else(|e| panic!("{path}: {e}: {:?}", answer.json));
    assert_eq!(
        serde_json::to_value(&value).expect("serializes"),
        answer.json,
        "{path}: the typed struct is the whole answer"
    );
    let route = path.split('?').next().unwrap_or(path);
    let template = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .find(|p| concrete(p) == route)
        .unwrap_or_else(|| panic!("{route} is not documented"));
    let schema =
        &doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    let wanted = required(doc, schema);
    assert!(
        !wanted.is_empty(),
        "{path}: the 200 schema requires nothing: {schema}"
    );
    let object = answer.json.as_object().expect("an object");
    let missing: Vec<_> = wanted.iter().filter(|k| !object.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{path}: {missing:?} required but absent"
    );
    value
}

#[actix_web::test]
async fn the_openapi_document_lists_every_admin_route_the_server_answers() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, "").start().await;

    // Behind the token like the rest of the admin API.
    let anonymous = t.send(t.http.get(t.url("/admin/openapi.json"))).await;
    assert_eq!(
        (anonymous.status, &anonymous.json["error"]),
        (401, &json!("unauthorized"))
    );
    let fetched = t.send(t.admin(Method::GET, "/admin/openapi.json")).await;
    assert_eq!(fetched.status, 200, "{:?}", fetched.json);
    let doc = fetched.json;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version:?}");
    assert!(doc["info"]["title"].is_string(), "{:?}", doc["info"]);

    // Exactly the routes the server is built from, no more, no fewer.
    let served: BTreeSet<(String, String)> = admin_routes().into_iter().collect();
    assert_eq!(
        served.len(),
        admin_routes().len(),
        "a route is registered twice"
    );
    let listed = documented(&doc);
    let undocumented: Vec<_> = served.difference(&listed).collect();
    let unserved: Vec<_> = listed.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );

    // Every operation requires the bearer token and documents its 401 with the error body.
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"], "bearer",
        "{:?}",
        doc["components"]["securitySchemes"]
    );
    assert_eq!(doc["security"], json!([{"admin_token": []}]));
    for (method, path) in &served {
        let operation = &doc["paths"][path][method.to_lowercase()];
        let unauthorized = &operation["responses"]["401"]["content"]["application/json"];
        assert_eq!(
            unauthorized["schema"]["$ref"], "#/components/schemas/ErrorBody",
            "{method} {path}: {operation}"
        );
    }
    // Every schema referred to is there; every answer says what it is.
    let mut referred = BTreeSet::new();
    references(&doc, &mut referred);
    let dangling: Vec<_> = referred
        .iter()
        .filter(|r| {
            let name = r.trim_start_matches("#/components/schemas/");
            !r.starts_with("#/components/schemas/") || doc["components"]["schemas"][name].is_null()
        })
        .collect();
    assert!(dangling.is_empty(), "references to no schema: {dangling:?}");
    for (method, path) in &served {
        let responses = doc["paths"][path][method.to_lowercase()]["responses"]
            .as_object()
            .expect("responses");
        for (status, response) in responses {
            let described = response["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty());
            assert!(described, "{method} {path} {status}: no description");
        }
    }
    let error_body = required(&doc, &json!({"$ref": "#/components/schemas/ErrorBody"}));
    assert_eq!(
        error_body,
        BTreeSet::from(["error".into(), "message".into()])
    );

    // The server answers each of them: 401 without the token; with it, never the answer of a
    // route it does not have (404 `no route …`) nor of a method the path does not take (405),
    // as it does for a path off the table.
    seed_dead_letters(&t, 1).await;
    let off_table = t.send(t.admin(Method::GET, "/admin/no-such-route")).await;
    assert_eq!(off_table.status, 404);
    let no_route = |answer: &Answer| {
        answer.status == 405
            || (answer.status == 404
                && answer.json["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route")))
    };
    assert!(no_route(&off_table), "{:?}", off_table.json);
    for (method, path) in &served {
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let url = t.url(&concrete(path));
        let anonymous = t.send(t.http.request(method.clone(), &url)).await;
        assert_eq!(
            anonymous.status, 401,
            "{method} {path}: {:?}",
            anonymous.json
        );
        let answered = t.send(t.admin(method.clone(), &concrete(path))).await;
        assert!(!no_route(&answered), "{method} {path}: {:?}", answered.json);
    }

    // Real answers are the typed structs, whole, with every required field.
    assert_eq!(t.post_json("/zulip/outgoing", &ping(501)).await.status, 200);
    let listeners: ListenerList = typed(&t, &doc, "/admin/listeners").await;
    let pinger = listeners
        .listeners
        .iter()
        .find(|l| l.listener.name == "pinger")
        .expect("pinger is listed");
    assert_eq!(pinger.listener.state, ListenerState::Ok);
    let detail: ListenerDetail = typed(&t, &doc, "/admin/listeners/pinger").await;
    assert_eq!(detail.listener.handler, "command_bot");
    let _: Stats = typed(&t, &doc, "/admin/stats").await;
    let mut events = None;
    let logged = eventually(std::time::Duration::from_secs(10), async || {
        let answer = t
            .send(t.admin(Method::GET, "/admin/events?per_page=5"))
            .await;
        let page: EventsPage = serde_json::from_value(answer.json).expect("an events page");
        let found = !page.events.is_empty();
        events = Some(page);
        found
    })
    .await;
    assert!(logged, "the ping was not logged: {events:?}");
    let page: EventsPage = typed(&t, &doc, "/admin/events?per_page=5").await;
    assert_eq!((page.page, page.per_page), (1, 5));
    let about: InboxEvents = typed(&t, &doc, "/admin/inbox?message_id=77").await;
    assert_eq!((about.message_id, about.events.len()), (77, 0));
    let dead: DeadLetterList = typed(&t, &doc, "/admin/dead-letters").await;
    assert_eq!(dead.events.len(), 1, "{dead:?}");
    let shown: DeadLetter = typed(&t, &doc, "/admin/dead-letters/dead-0").await;
    assert_eq!(shown.entry.event_id, "dead-0");

    // A request body built from the typed struct is read as the API reads it.
    let action = DeadLetterAction {
        ids: vec!["dead-0".into()],
        ..DeadLetterAction::default()
    };
    let replayed = t
        .send(
            t.admin(Method::POST, "/admin/dead-letters/replay")
                .json(&action),
        )
        .await;
    assert_eq!(replayed.status, 200, "{:?}", replayed.json);
    let requeued: Requeued = serde_json::from_value(replayed.json).expect("requeued");
    assert_eq!(requeued.requeued, 1);
}
