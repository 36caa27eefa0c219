//! Spans: the neutral model, context extraction, per-process resources and the builder
//! that turns paired HTTP exchanges into spans.
pub mod model;

pub use model::{AttrValue, Attribute, Resource, Span, SpanKind, Status};
