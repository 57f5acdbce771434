//! One query in, one reply out: the whole DNS logic, free of sockets so it can
//! be tested (and fuzzed) on bytes alone.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::{NameTable, TTL};

/// What to send back for one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Send nothing: the packet is a response, or too short to carry an id.
    Drop,
    /// Not a name of ours: ask the upstream resolver (only from [`respond`]
    /// with `forward` set).
    Forward,
}

/// The largest reply a TCP client can take (the 2-byte length prefix).
pub const TCP_LIMIT: usize = u16::MAX as usize;

/// Answer `packet` from `table`. `udp` says whether the reply must fit the
/// client's UDP payload size (512 bytes, or its EDNS size); a reply that does
/// not is sent truncated (TC set, no answers) so the client retries over TCP.
pub fn answer(packet: &[u8], table: &NameTable, udp: bool) -> Reply {
    respond(packet, table, udp, false)
}

/// [`answer`], except that a well-formed query for a name the table does not
/// have is [`Reply::Forward`] when `forward` is set (a DNS proxy with an
/// upstream), instead of NXDOMAIN.
pub fn respond(packet: &[u8], table: &NameTable, udp: bool, forward: bool) -> Reply {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) if packet.len() >= 12 && packet[2] & 0x80 == 0 => {
            // A header we can reply to, with a body we cannot read.
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return encode(&Message::error_msg(
                id,
                OpCode::Query,
                ResponseCode::FormErr,
            ));
        }
        Err(_) => return Reply::Drop,
    };
    if request.metadata.message_type == MessageType::Response {
        return Reply::Drop;
    }
    let mut reply = reply_to(&request);
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(edns.max_payload().max(512));
        reply.set_edns(ours);
    }
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return encode(&reply);
    }
    let [query] = request.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return encode(&reply);
    };
    let name = query.name().to_ascii();
    let known = (query.query_class() == DNSClass::IN)
        .then(|| table.lookup(&name))
        .flatten();
    match known {
        None if forward => return Reply::Forward,
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(addrs) => {
            // Ours: authoritative, with the records of the asked family; a
            // name with no address of that family is NOERROR with no answers.
            reply.metadata.authoritative = true;
            for addr in addrs {
                let rdata = match (query.query_type(), addr) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
            }
        }
    }
    let limit = if udp {
        usize::from(request.max_payload())
    } else {
        TCP_LIMIT
    };
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Reply::Send(bytes),
        _ => encode(&reply.truncate()),
    }
}

/// SERVFAIL for `packet` (the upstream could not be reached), or nothing if
/// the packet is not a query.
pub fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut reply = reply_to(&request);
    reply.metadata.response_code = ResponseCode::ServFail;
    reply.to_vec().ok()
}

/// A response to `request`: its id, opcode, RD/CD bits and questions, with
/// recursion available (we answer for the names we know and forward).
fn reply_to(request: &Message) -> Message {
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.queries = request.queries.clone();
    reply
}

fn encode(message: &Message) -> Reply {
    match message.to_vec() {
        Ok(bytes) => Reply::Send(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a DNS reply");
            Reply::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn table() -> NameTable {
        let mut t = NameTable::new();
        t.insert(
            "reviews.bookinfo.svc.cluster.local",
            ["10.96.0.5".parse().expect("ip")],
        );
        t.insert(
            "dual.example.com",
            [
                "10.0.0.1".parse().expect("ip"),
                "2001:db8::1".parse().expect("ip"),
            ],
        );
        let many = (0..100).map(|i| IpAddr::from([10, 1, 0, i]));
        t.insert("headless.bookinfo.svc.cluster.local", many);
        t
    }

    fn ask(name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), ty));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }

    fn reply(packet: &[u8], udp: bool) -> Message {
        match answer(packet, &table(), udp) {
            Reply::Send(bytes) => Message::from_vec(&bytes).expect("decodable reply"),
            other => panic!("no reply: {other:?}"),
        }
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn known_names_are_answered_authoritatively() {
        let m = reply(
            &ask("Reviews.bookinfo.svc.cluster.local.", RecordType::A, None),
            true,
        );
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(addrs(&m), ["10.96.0.5"]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn families_are_kept_apart() {
        let m = reply(&ask("dual.example.com.", RecordType::AAAA, None), true);
        assert_eq!(addrs(&m), ["2001:db8::1"]);
        let m = reply(
            &ask(
                "reviews.bookinfo.svc.cluster.local.",
                RecordType::AAAA,
                None,
            ),
            true,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = reply(&ask("dual.example.com.", RecordType::TXT, None), true);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_names_are_nxdomain() {
        for name in [
            "nope.bookinfo.svc.cluster.local.",
            "example.org.",
            "5.0.44.10.in-addr.arpa.",
        ] {
            let m = reply(&ask(name, RecordType::A, None), true);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty());
        }
    }

    #[test]
    fn oversized_udp_replies_are_truncated_and_whole_over_tcp() {
        let q = ask("headless.bookinfo.svc.cluster.local.", RecordType::A, None);
        let m = reply(&q, true);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let m = reply(&q, false);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        // A client that says it takes 4096 bytes gets them over UDP.
        let m = reply(
            &ask(
                "headless.bookinfo.svc.cluster.local.",
                RecordType::A,
                Some(4096),
            ),
            true,
        );
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(4096));
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        // A readable header with a broken question.
        let mut bad = ask("reviews.bookinfo.svc.cluster.local.", RecordType::A, None);
        bad.truncate(20);
        let m = reply(&bad, true);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Too short for a header, or a response: no reply at all.
        assert_eq!(answer(b"\x12\x34\x01", &table(), true), Reply::Drop);
        let mut resp = Message::response(7, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("a.").expect("n"),
            RecordType::A,
        ));
        assert_eq!(
            answer(&resp.to_vec().expect("enc"), &table(), true),
            Reply::Drop
        );
        // Every prefix and a byte flip of a real query: never a panic.
        let q = ask(
            "reviews.bookinfo.svc.cluster.local.",
            RecordType::A,
            Some(1232),
        );
        for n in 0..q.len() {
            let _ = answer(&q[..n], &table(), true);
            let mut flipped = q.clone();
            flipped[n] ^= 0xff;
            let _ = answer(&flipped, &table(), true);
        }
    }

    #[test]
    fn unknown_names_are_forwarded_when_there_is_an_upstream() {
        let q = ask("example.org.", RecordType::A, None);
        assert_eq!(respond(&q, &table(), true, true), Reply::Forward);
        // Ours are still answered here; garbage is still FORMERR, not forwarded.
        let ours = ask("dual.example.com.", RecordType::A, None);
        assert!(matches!(
            respond(&ours, &table(), true, true),
            Reply::Send(_)
        ));
        assert!(matches!(
            respond(&q[..20], &table(), true, true),
            Reply::Send(_)
        ));
        let fail = Message::from_vec(&servfail(&q).expect("servfail")).expect("decode");
        assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(fail.metadata.id, 0x1234);
        assert_eq!(fail.queries.len(), 1);
    }

    #[test]
    fn other_opcodes_and_question_counts() {
        let mut m = Message::new(9, MessageType::Query, OpCode::Status);
        m.add_query(Query::query(
            Name::from_ascii("a.").expect("n"),
            RecordType::A,
        ));
        let r = reply(&m.to_vec().expect("enc"), true);
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        let m = Message::new(10, MessageType::Query, OpCode::Query);
        let r = reply(&m.to_vec().expect("enc"), true);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }
}
