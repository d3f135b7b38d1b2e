//! Cap'n Proto RPC messages built by hand, for the
//! fuzz targets and fault tests that send the control server raw traffic:
//! a bootstrap, then calls of `Control` methods pipelined on the capability
//! the bootstrap's answer promises, as a capnp-rpc client frames them.
//! Each function returns one message in the stream framing (segment table,
//! then segments), ready to write to a connection or to corrupt.

use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::message;

use crate::control_capnp::control;

/// A `Bootstrap` message asking question `question`.
pub fn bootstrap(question: u32) -> Vec<u8> {
    let mut m = capnp::message::Builder::new_default();
    m.init_root::<message::Builder<'_>>()
        .init_bootstrap()
        .set_question_id(question);
    serialize(&m)
}

/// A `Call` of `Control` method `method` (its ordinal in `control.capnp`)
/// as question `question`, on the capability that the answer to bootstrap
/// question `bootstrap` promises; `params` fills the parameter struct's
/// pointer (any shape: a fuzz seed may put a wrong one there).
pub fn call_on_bootstrap(
    bootstrap: u32,
    question: u32,
    method: u16,
    params: impl FnOnce(capnp::any_pointer::Builder<'_>),
) -> Vec<u8> {
    let mut m = capnp::message::Builder::new_default();
    let mut c = m.init_root::<message::Builder<'_>>().init_call();
    c.set_question_id(question);
    c.set_interface_id(control::Client::TYPE_ID);
    c.set_method_id(method);
    c.reborrow()
        .init_target()
        .init_promised_answer()
        .set_question_id(bootstrap);
    params(c.init_params().init_content());
    serialize(&m)
}

/// A valid `Control.hello` (this build's protocol version) as question
/// `question`, on bootstrap question `bootstrap`'s capability: the call a
/// connection must make before any other.
pub fn hello_on_bootstrap(bootstrap: u32, question: u32) -> Vec<u8> {
    call_on_bootstrap(bootstrap, question, HELLO, |p| {
        p.init_as::<control::hello_params::Builder<'_>>()
            .set_protocol_version(crate::PROTOCOL_VERSION);
    })
}

/// `Control.hello`'s method ordinal.
pub const HELLO: u16 = 0;

fn serialize(m: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Vec<u8> {
    let mut out = Vec::new();
    capnp::serialize::write_message(&mut out, m).expect("writing to a Vec cannot fail");
    out
}
