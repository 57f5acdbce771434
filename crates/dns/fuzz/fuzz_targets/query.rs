//! Fuzzes the DNS request path with arbitrary packets, over UDP and TCP
//! limits and with forwarding on and off: no panic, and every reply is a
//! well-formed response to the packet's id that fits where it must go.

#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fn table() -> dns::NameTable {
    let mut t = dns::NameTable::new();
    t.insert(
        "reviews.default.svc.cluster.local",
        ["10.96.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
    );
    let many = (0..200u8).map(|i| std::net::IpAddr::from([10, 1, 0, i]));
    t.insert("headless.default.svc.cluster.local", many);
    t
}

fuzz_target!(|data: &[u8]| {
    let table = table();
    for udp in [true, false] {
        for forward in [true, false] {
            let dns::Reply::Send(bytes) = dns::respond(data, &table, udp, forward) else {
                continue;
            };
            let reply = Message::from_vec(&bytes).expect("our reply decodes");
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(&reply.metadata.id.to_be_bytes()[..], &data[..2]);
            if udp {
                assert!(bytes.len() <= 4096, "UDP reply of {} bytes", bytes.len());
            }
        }
    }
    let _ = dns::servfail(data);
});
