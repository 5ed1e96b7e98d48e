pub mod builder;
pub mod proto;
