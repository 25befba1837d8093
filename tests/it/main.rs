//! Integration tests: real sockets, real hub, one test binary.

mod analysis;
mod auth;
mod bad_input;
mod broadcast;
mod calls;
mod cluster;
mod connect;
mod demo;
mod durability;
mod openapi;
mod orders;
mod presence;
mod rest;
mod rfc6455;
mod scope;
mod seats;
mod sessions;
mod shutdown;
mod support;
