//! A root rotation under load, by Istio's plug-in CA procedure, end to end:
//! a pilot CA (self-signed root A) with 4 s workload certificates, our
//! proxy pair and the Envoy + `halyard agent` pair in front of an echo,
//! 200 req/s through each (a quarter on fresh connections, so new mTLS
//! handshakes between the sidecars all along). The CA directory is
//! rewritten in three steps while the pilot runs, and after each the test
//! waits until every sidecar holds what the step promises (its ROOTCA
//! roots and the issuer of its leaf, from the admin config dump):
//!
//! 1. `root-cert.pem` = [A, B], still signing with A: ROOTCA [A, B].
//! 2. `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` = an intermediate
//!    under B: every leaf from B's intermediate, ROOTCA [A, B].
//! 3. `root-cert.pem` = [B]: ROOTCA [B].
//!
//! No request may fail throughout.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::mesh_tls::{LOOPBACK, Tally, run_loads, start_mesh};
use identity::ca::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subjects of the certificates in a PEM text.
fn subjects(pem_text: &[u8]) -> Vec<String> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            X509Certificate::from_der(p.contents())
                .ok()
                .map(|(_, c)| c.subject().to_string())
        })
        .collect()
}

/// What a sidecar trusts and who signed its leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Trust {
    /// The subjects of its ROOTCA roots.
    roots: BTreeSet<String>,
    /// The issuer of its `default` leaf.
    issuer: String,
}

/// From the sidecar's admin config dump (Envoy's and ours alike).
fn trust(admin: u16) -> Option<Trust> {
    use base64::Engine;
    let url = format!("http://{LOOPBACK}:{admin}/config_dump?resource=dynamic_active_secrets");
    let dump: serde_json::Value = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?
        .get(url)
        .send()
        .ok()?
        .json()
        .ok()?;
    let bytes = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()
    };
    let (mut roots, mut issuer) = (None, None);
    for c in dump["configs"].as_array()? {
        let secret = &c["secret"];
        match secret["name"].as_str()? {
            "ROOTCA" => {
                let pem = bytes(&secret["validation_context"]["trusted_ca"]["inline_bytes"])?;
                roots = Some(subjects(&pem).into_iter().collect());
            }
            "default" => {
                let pem = bytes(&secret["tls_certificate"]["certificate_chain"]["inline_bytes"])?;
                let leaf = pem::parse_many(&pem).ok()?.into_iter().next()?;
                let (_, c) = X509Certificate::from_der(leaf.contents()).ok()?;
                issuer = Some(c.issuer().to_string());
            }
            _ => {}
        }
    }
    Some(Trust {
        roots: roots?,
        issuer: issuer?,
    })
}

/// Sets the flag when dropped (also when a step panics), so the load stops.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

#[test]
fn a_root_rotation_under_load_fails_no_request() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let (pilot, _echo, pairs, rt) = start_mesh(dir.path(), "4s");
    let ca = pilot.dir.join("ca");
    let b = dir.path().join("root-b");
    identity::Ca::create_plug_in(&b, "cluster.local", "Root B", std::time::SystemTime::now())
        .expect("root B and an intermediate");
    let (root_a, root_b) = (read(&ca.join(ROOT_CERT)), read(&b.join(ROOT_CERT)));
    let subject = |text: &str| subjects(text.as_bytes()).remove(0);
    let (a_name, b_name) = (subject(&root_a), subject(&root_b));
    let inter_name = subject(&read(&b.join(CA_CERT)));
    let state = |roots: &[&String], issuer: &String| Trust {
        roots: roots.iter().map(|r| r.to_string()).collect(),
        issuer: issuer.clone(),
    };
    let sidecars: Vec<(String, u16)> = pairs
        .iter()
        .flat_map(|p| p.sidecars())
        .map(|s| (s.name.clone(), s.admin))
        .collect();
    // Until every sidecar holds `want` (at most 15 s).
    let all_hold = |step: &str, want: &Trust| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now: Vec<Option<Trust>> = sidecars.iter().map(|(_, a)| trust(*a)).collect();
            if now.iter().all(|t| t.as_ref() == Some(want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: want {want:?}, sidecars hold {:?}",
                sidecars
                    .iter()
                    .map(|(n, _)| n)
                    .zip(&now)
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    all_hold("before", &state(&[&a_name], &a_name));
    let setup = started.elapsed();

    let tallies: Vec<Arc<Tally>> = pairs.iter().map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    // (step, how long until every sidecar held it, requests ok by then per pair)
    let steps = std::thread::scope(|scope| {
        let steps = scope.spawn(|| {
            let _stop = StopOnDrop(&stop);
            let mut steps = Vec::new();
            let mut mark = |step: &'static str, at: Instant| {
                let oks: Vec<u64> = tallies.iter().map(|t| t.ok()).collect();
                steps.push((step, at.elapsed(), oks));
            };
            // Load on the old root first.
            std::thread::sleep(Duration::from_secs(1));
            let t = Instant::now();
            write(&ca.join(ROOT_CERT), &format!("{root_a}{root_b}"));
            all_hold("1. both roots", &state(&[&a_name, &b_name], &a_name));
            mark("1. root-cert.pem = [A, B], signing with A", t);
            let t = Instant::now();
            for f in [CA_KEY, CA_CERT, CERT_CHAIN] {
                write(&ca.join(f), &read(&b.join(f)));
            }
            all_hold("2. B signs", &state(&[&a_name, &b_name], &inter_name));
            mark("2. signing with B's intermediate", t);
            let t = Instant::now();
            write(&ca.join(ROOT_CERT), &root_b);
            all_hold("3. only B", &state(&[&b_name], &inter_name));
            mark("3. root-cert.pem = [B]", t);
            // Load on the new root alone, past a renewal of every sidecar.
            std::thread::sleep(Duration::from_secs(3));
            steps
        });
        rt.block_on(run_loads(&pairs, &tallies, &stop));
        steps.join().expect("the steps")
    });
    let elapsed = load_started.elapsed();

    eprintln!("setup {setup:.1?}, load {elapsed:.1?}");
    for (step, took, oks) in &steps {
        eprintln!("{step}: every sidecar after {took:.1?}; requests ok by then {oks:?}");
    }
    for (p, t) in pairs.iter().zip(&tallies) {
        eprintln!(
            "{}: {} requests ok ({} on fresh connections), {} failed, in {elapsed:.1?}",
            p.who,
            t.ok(),
            t.fresh_ok.load(Ordering::Relaxed),
            t.failed()
        );
        assert_eq!(t.failed(), 0, "{}: {:?}", p.who, t.errors());
        let expected = common::mesh_tls::RATE * elapsed.as_secs() * 9 / 10;
        assert!(t.ok() >= expected, "{}: {} of ~{expected}", p.who, t.ok());
    }
    // The pilot reloaded its CA three times, and no file was refused.
    let log = pilot.log();
    let reloads = log.matches("CA files changed: reloaded").count();
    assert_eq!(reloads, 3, "{log}");
    assert!(!log.contains("do not load"), "{log}");
}
