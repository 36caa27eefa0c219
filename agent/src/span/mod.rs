//! Spans: the neutral model, context extraction, per-process resources, redaction and
//! the builder that turns paired HTTP exchanges into spans.
pub mod build;
pub mod container;
pub mod context;
pub mod link;
pub mod model;
pub mod nat;
pub mod pods;
pub mod redact;
pub mod resource;
pub mod route;
pub mod sql;

pub use model::{hex, AttrValue, Attribute, Resource, Span, SpanKind, Status, LOCAL_ROOT};
