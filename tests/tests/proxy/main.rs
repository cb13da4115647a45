//! The proxy on loopback, driven by real clients against real upstream
//! servers, one test binary for all of it (a binary per file would link the
//! whole dependency graph a dozen times over). Each module is one subject;
//! every test takes addresses of its own (`divert_tests::unique_ip`), so
//! they run side by side.

mod discovery;
mod drain;
mod drops;
mod framing;
mod grpc;
mod http1;
mod http1_fast_path;
mod http2;
mod key_cookie;
mod limits;
mod operability;
mod pod;
mod reload;
mod smuggling;
mod spans;
mod websocket;
