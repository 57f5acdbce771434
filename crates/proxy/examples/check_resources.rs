//! Check a JSON dump of xDS resources (`{"listeners": [...], "routes": [...],
//! "clusters": [...], "endpoints": [...]}`, e.g. the pilot's goldens) against
//! what the proxy runs: prints each refusal with its field path.
//! `cargo run -p proxy --example check_resources -- FILE...`

fn main() -> anyhow::Result<()> {
    let mut refused = 0;
    for file in std::env::args().skip(1) {
        let dump: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        for (kind, name, result) in proxy::config::check_dump(&dump) {
            match result {
                Ok(()) => println!("ok       {kind} {name}"),
                Err(e) => {
                    refused += 1;
                    println!("REFUSED  {kind} {name}: {e}");
                }
            }
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} resources refused");
    }
    Ok(())
}
