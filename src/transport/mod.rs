pub mod frame;
pub mod protocol;
