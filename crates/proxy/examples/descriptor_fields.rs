fn main() {
    for m in xds::json::pool().all_messages() {
        for f in m.fields() {
            let kind = match f.kind() {
                prost_reflect::Kind::Message(k) => k.full_name().to_string(),
                _ => String::from("-"),
            };
            let label = if f.is_map() {
                "map"
            } else if f.is_list() {
                "list"
            } else {
                "one"
            };
            println!(
                "{} {} {} {} {}",
                m.full_name(),
                f.name(),
                f.number(),
                kind,
                label
            );
        }
    }
}
