//! Integration tests for the shield: a real origin on port 0, the real shield in front of it,
//! real HTTP clients. One test binary; modules by capability.

mod atlas;
mod attack;
mod cache;
mod clients;
mod common;
mod fidelity;
mod geo;
mod goodbots;
mod h1;
mod limits;
mod origin;
mod reload;
