//! # paybridge
pub mod adapters;
pub mod app;
pub mod domain;
pub mod tenants;
