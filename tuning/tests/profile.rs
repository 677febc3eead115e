//! `xcord-tune profile`: the shipped files in tuning/profiles/ are exactly its output
//! for the reference target, its values scale with the target, and a host set up
//! with a generated profile passes `xcord-tune check` for that target.

mod common;
use common::*;
use std::path::Path;

/// The reference target the shipped profiles were generated for.
const REFERENCE: [&str; 6] = [
    "--target-connections",
    "1000000",
    "--shards",
    "auto",
    "--host-cores",
    "16",
];

const FILES: [&str; 3] = [
    "99-xcord-gateway.conf",
    "xcord-gateway.limits.conf",
    "xcord-gateway.service",
];

fn value(text: &str, key: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
}

fn generate(tag: &str, args: &[&str]) -> std::path::PathBuf {
    let out = scratch(tag);
    let mut all = vec!["profile", "--out"];
    let o = out.display().to_string();
    all.push(&o);
    all.extend_from_slice(args);
    let r = tune(&all);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    out
}

#[test]
fn shipped_profiles_are_the_generated_ones() {
    let out = generate("reference", &REFERENCE);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for f in FILES {
        let want = std::fs::read_to_string(out.join(f)).expect("generated");
        let have = std::fs::read_to_string(shipped.join(f)).expect("shipped");
        assert_eq!(
            have,
            want,
            "tuning/profiles/{f} differs from `xcord-tune profile {}`; regenerate it",
            REFERENCE.join(" ")
        );
    }
}

#[test]
fn values_follow_the_target_and_shards() {
    let out = generate(
        "scaled",
        &[
            "--target-connections",
            "250000",
            "--shards",
            "auto",
            "--host-cores",
            "8",
        ],
    );
    let sysctl = std::fs::read_to_string(out.join(FILES[0])).expect("sysctl");
    let limits = std::fs::read_to_string(out.join(FILES[1])).expect("limits");
    let unit = std::fs::read_to_string(out.join(FILES[2])).expect("unit");
    // fds 250,000 + 64 + 8 × 7 = 250,120; × 1.25 = 312,650 → 5 × 65,536 = 327,680.
    assert_eq!(value(&unit, "LimitNOFILE"), "327680");
    assert!(limits.contains("xcord  hard  nofile   327680"));
    assert_eq!(value(&sysctl, "fs.nr_open"), "1048576");
    // tcp_mem: 250,000 pages at 4 KiB per connection; ×2, ×3.
    assert_eq!(value(&sysctl, "net.ipv4.tcp_mem"), "250000 500000 750000");
    assert_eq!(value(&sysctl, "net.core.somaxconn"), "4096");
    assert_eq!(value(&sysctl, "net.core.netdev_max_backlog"), "16384");
    // auto on 8 cores = 7 shards on CPUs 0-6, CPU 7 spare.
    assert_eq!(value(&unit, "Environment=XCORD_SHARDS"), "7");
    assert_eq!(value(&unit, "CPUAffinity"), "0-7");
    assert_eq!(value(&unit, "Environment=XCORD_MAX_CONNECTIONS"), "250000");
    assert_eq!(value(&unit, "LimitMEMLOCK"), "8M");

    let out = generate(
        "fixed",
        &[
            "--target-connections",
            "5000",
            "--shards",
            "2",
            "--host-cores",
            "2",
            "--user",
            "gw",
        ],
    );
    let unit = std::fs::read_to_string(out.join(FILES[2])).expect("unit");
    let limits = std::fs::read_to_string(out.join(FILES[1])).expect("limits");
    assert_eq!(value(&unit, "CPUAffinity"), "0-1");
    assert_eq!(value(&unit, "User"), "gw");
    assert_eq!(value(&unit, "LimitNOFILE"), "65536");
    assert!(limits.contains("gw  soft  nofile   65536"));
}

#[test]
fn profile_without_out_prints_all_three() {
    let r = tune(&[
        "profile",
        "--target-connections",
        "1000",
        "--host-cores",
        "4",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in FILES {
        assert!(r.stdout.contains(&format!("==> {f}")), "{f}");
    }
    let r = tune(&["profile", "--target-connections", "0", "--host-cores", "4"]);
    assert_eq!(r.code, 2);
}

/// Build a fixture /proc from a generated profile and check it: every setting the
/// profile writes must satisfy `check` for the same target.
fn applied_profile_passes(n: u64, cores: u64) {
    let out = generate(
        "applied",
        &[
            "--target-connections",
            &n.to_string(),
            "--host-cores",
            &cores.to_string(),
        ],
    );
    let sysctl = std::fs::read_to_string(out.join(FILES[0])).expect("sysctl");
    let unit = std::fs::read_to_string(out.join(FILES[2])).expect("unit");
    let root = scratch("applied-root");
    copy_tree(&fixture("proc-pass"), &root);
    put(
        &root,
        "self/status",
        &format!("Cpus_allowed_list:\t0-{}\n", cores - 1),
    );
    for l in sysctl.lines() {
        let l = l.trim_start_matches('-');
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let (k, v) = l.split_once('=').expect("key = value");
        put(
            &root,
            &format!("sys/{}", k.trim().replace('.', "/")),
            &format!("{}\n", v.trim().replace(' ', "\t")),
        );
    }
    let nofile = value(&unit, "LimitNOFILE");
    let memlock: u64 = value(&unit, "LimitMEMLOCK")
        .trim_end_matches('M')
        .parse::<u64>()
        .expect("MiB")
        << 20;
    put(
        &root,
        "self/limits",
        &format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            {nofile:<21}{nofile:<21}files     \n\
             Max locked memory         {memlock:<21}{memlock:<21}bytes     \n"
        ),
    );
    let r = tune(&[
        "check",
        "--proc-root",
        &root.display().to_string(),
        "--target-connections",
        &n.to_string(),
        "--json",
    ]);
    let j = r.json();
    assert_eq!(
        j["status"], "PASS",
        "{n} connections on {cores} cores:\n{}",
        r.stdout
    );
}

#[test]
fn a_host_with_the_profile_applied_passes_check() {
    applied_profile_passes(1_000_000, 16);
    applied_profile_passes(100_000, 4);
    applied_profile_passes(5_000, 2);
}
