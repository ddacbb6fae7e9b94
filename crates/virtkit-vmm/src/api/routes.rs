//! The endpoints: Cloud Hypervisor's paths, methods, bodies and status codes, mapped onto
//! the [`VmSlot`].

use crate::config::VmConfig;

use super::http::{Request, Response};
use super::slot::{SlotError, VmSlot};

/// Every path starts with this.
pub const API_ROOT: &str = "/api/v1/";

/// Cloud Hypervisor endpoints virtkit does not implement: 501 with a message saying so.
const NOT_IMPLEMENTED: &[&str] = &[
    "vm.add-device",
    "vm.add-disk",
    "vm.add-fs",
    "vm.add-generic-vhost-user",
    "vm.add-net",
    "vm.add-pmem",
    "vm.add-user-device",
    "vm.add-vdpa",
    "vm.add-vsock",
    "vm.balloon-stats",
    "vm.coredump",
    "vm.counters",
    "vm.nmi",
    "vm.remove-device",
    "vm.resize",
    "vm.resize-disk",
    "vm.resize-zone",
];

/// Errors of the routing layer: what a request asked for that no endpoint gives.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No such endpoint (Cloud Hypervisor's message).
    #[error("Not Found")]
    NotFound,
    /// A method the endpoint does not take, or a body where none belongs (Cloud
    /// Hypervisor's message).
    #[error("Bad Request")]
    BadRequest,
    /// `vm.create` without a body.
    #[error("the request needs a JSON body")]
    NoBody,
    /// A body that is not a `VmConfig` (Cloud Hypervisor's message, then serde's).
    #[error("Failed to deserialize JSON")]
    Json(#[source] serde_json::Error),
    /// A Cloud Hypervisor endpoint virtkit lacks.
    #[error("virtkit does not implement {0}")]
    NotImplemented(String),
    /// The request reached the VM and failed there; `.0` is Cloud Hypervisor's
    /// description of the failed action.
    #[error("{0}")]
    Api(&'static str, #[source] SlotError),
    /// An answer could not be written as JSON.
    #[error("Internal Server Error")]
    Serialize(#[source] serde_json::Error),
}

impl RouteError {
    fn status(&self) -> u16 {
        match self {
            RouteError::NotFound => 404,
            RouteError::BadRequest | RouteError::NoBody | RouteError::Json(_) => 400,
            RouteError::NotImplemented(_) => 501,
            RouteError::Api(_, e) => e.status(),
            RouteError::Serialize(_) => 500,
        }
    }

    /// The messages joined, for the log.
    fn response_text(&self) -> String {
        let mut s = self.to_string();
        let mut e = std::error::Error::source(self);
        while let Some(err) = e {
            s.push_str(": ");
            s.push_str(&err.to_string());
            e = err.source();
        }
        s
    }

    /// Cloud Hypervisor's error body: the messages from the outermost error to the root.
    fn response(&self) -> Response {
        let mut messages = Vec::new();
        if let RouteError::Api(..) = self {
            messages.push("Error from API".to_string());
        }
        let mut e: Option<&dyn std::error::Error> = Some(self);
        while let Some(err) = e {
            messages.push(err.to_string());
            e = err.source();
        }
        Response::error(self.status(), &messages)
    }
}

/// What the server does after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Keep serving.
    Serve,
    /// Stop the server (`vmm.shutdown`).
    Exit,
}

/// What `vmm.ping` answers (Cloud Hypervisor's `VmmPingResponse`).
#[derive(Debug, serde::Serialize)]
struct Ping {
    build_version: String,
    version: String,
    pid: i64,
    features: Vec<String>,
}

/// Answers one request.
pub(crate) fn handle(slot: &VmSlot, req: &Request) -> (Response, After) {
    match route(slot, req) {
        Ok((resp, after)) => (resp, after),
        Err(e) => {
            log::info!("API {} {}: {}", req.method, req.path, e.response_text());
            (e.response(), After::Serve)
        }
    }
}

fn no_content(r: Result<(), SlotError>, what: &'static str) -> Result<Response, RouteError> {
    r.map(|()| Response::empty(204))
        .map_err(|e| RouteError::Api(what, e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Response, RouteError> {
    serde_json::to_vec(v)
        .map(|b| Response::json(200, b))
        .map_err(RouteError::Serialize)
}

/// The directory of a `file://` URL field of the JSON body (Cloud Hypervisor's
/// `destination_url` / `source_url`).
/// The string member `field` of the JSON body.
fn string_field(req: &Request, field: &str) -> Result<String, RouteError> {
    let body = req.body.as_deref().ok_or(RouteError::NoBody)?;
    let v: serde_json::Value = serde_json::from_slice(body).map_err(RouteError::Json)?;
    v.get(field)
        .and_then(|u| u.as_str())
        .map(str::to_string)
        .ok_or(RouteError::BadRequest)
}

fn file_url(req: &Request, field: &str) -> Result<std::path::PathBuf, RouteError> {
    let url = string_field(req, field)?;
    match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => Ok(p.into()),
        _ => Err(RouteError::BadRequest),
    }
}

fn route(slot: &VmSlot, req: &Request) -> Result<(Response, After), RouteError> {
    let name = req
        .path
        .strip_prefix(API_ROOT)
        .ok_or(RouteError::NotFound)?;
    let get = req.method == "GET";
    let put = req.method == "PUT";
    let serve = |r: Result<Response, RouteError>| r.map(|resp| (resp, After::Serve));
    // PUT actions take no body.
    let action = |f: fn(&VmSlot) -> Result<(), SlotError>, what| {
        if !put || req.body.is_some() {
            return Err(RouteError::BadRequest);
        }
        serve(no_content(f(slot), what))
    };
    match name {
        "vmm.ping" if get => serve(to_json(&Ping {
            build_version: format!("virtkit-vmm {}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: i64::from(std::process::id()),
            features: Vec::new(),
        })),
        "vm.info" if get => match slot.info() {
            Ok(info) => serve(to_json(&info)),
            Err(e) => Err(RouteError::Api("The VM info is not available", e)),
        },
        "vmm.shutdown" if put => {
            slot.delete()
                .map_err(|e| RouteError::Api("The VMM could not shutdown", e))?;
            Ok((Response::empty(200), After::Exit))
        }
        "vm.create" if put => {
            let body = req.body.as_deref().ok_or(RouteError::NoBody)?;
            let config: VmConfig = serde_json::from_slice(body).map_err(RouteError::Json)?;
            serve(no_content(
                slot.create(config),
                "The VM could not be created",
            ))
        }
        "vm.boot" => action(VmSlot::boot, "The VM could not boot"),
        "vm.pause" => action(VmSlot::pause, "The VM could not be paused"),
        "vm.resume" => action(VmSlot::resume, "The VM could not resume"),
        "vm.shutdown" => action(VmSlot::shutdown, "The VM could not shutdown"),
        "vm.reboot" => action(VmSlot::reboot, "The VM could not reboot"),
        "vm.power-button" => action(VmSlot::power_button, "Error triggering power button"),
        "vm.delete" => action(VmSlot::delete, "The VM could not be deleted"),
        "vm.snapshot" if put => {
            let dir = file_url(req, "destination_url")?;
            serve(no_content(
                slot.snapshot(&dir),
                "The VM could not be snapshotted",
            ))
        }
        "vm.restore" if put => {
            let dir = file_url(req, "source_url")?;
            serve(no_content(
                slot.restore(&dir),
                "The VM could not be restored",
            ))
        }
        "vm.send-migration" if put => {
            let url = string_field(req, "destination_url")?;
            serve(no_content(
                slot.send_migration(&url),
                "The VM could not be migrated",
            ))
        }
        "vm.receive-migration" if put => {
            let url = string_field(req, "receiver_url")?;
            serve(no_content(
                slot.receive_migration(&url),
                "The VM migration could not be received",
            ))
        }
        "vmm.ping"
        | "vm.info"
        | "vmm.shutdown"
        | "vm.create"
        | "vm.snapshot"
        | "vm.restore"
        | "vm.send-migration"
        | "vm.receive-migration" => Err(RouteError::BadRequest),
        other if NOT_IMPLEMENTED.contains(&other) => {
            Err(RouteError::NotImplemented(other.to_string()))
        }
        _ => Err(RouteError::NotFound),
    }
}
