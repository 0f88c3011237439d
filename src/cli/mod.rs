//! Presentation for the `vxnet` CLI: docker-shaped JSON, tables and templates.

pub mod format;
pub mod template;
