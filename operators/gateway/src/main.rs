//! `gateway-operator`: the gateway operator's command line, a thin shell over the
//! `gateway_operator` library.

fn main() {}
