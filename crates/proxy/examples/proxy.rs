//! Run the proxy from a bootstrap file, outside the `halyard` binary (for
//! benchmarks and debugging): `cargo run -p proxy --example proxy -- FILE [WORKERS]`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: proxy BOOTSTRAP [WORKERS]"))?;
    let concurrency = args.next().map(|w| w.parse()).transpose()?;
    let opts = proxy::ProxyOptions {
        bootstrap: bootstrap.into(),
        ready_port: None,
        concurrency,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.worker_threads())
        .enable_all()
        .build()?;
    runtime.block_on(proxy::run(opts))
}
