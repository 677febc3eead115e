//! `xcord-tune check` against fixture `/proc` trees (tests/fixtures/proc-*): a tuned
//! host that passes, a default-ish host that only warns, a small old host that fails,
//! and edited copies for io_uring, unreadable files and oversubscribed shards.

mod common;
use common::*;

#[test]
fn tuned_host_passes_for_a_million() {
    let r = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-pass"),
        "--target-connections",
        "1000000",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["status"], "PASS");
    assert_eq!(j["shards"], 15, "auto on 16 cores");
    for x in j["rows"].as_array().expect("rows") {
        assert_eq!(x["status"], "PASS", "{x}");
        assert!(x["fix"].is_null(), "{x}");
    }
    assert_eq!(row(&j, "nofile_hard")["needed"], ">= 1,000,184");
    assert_eq!(row(&j, "memlock")["needed"], ">= 4.7 MiB (15 x 320 KiB)");
    // 1,310,720 − 64 − 8 × 15
    assert_eq!(j["holds"]["by_fds"], 1_310_536);
    // tcp_mem pressure 2,000,000 pages × 4 KiB / 4 KiB per connection
    assert_eq!(j["holds"]["by_tcp_mem"], 2_000_000);
    // (64 GiB × 0.75 − 64 MiB − 15 × 8 MiB) / 16 KiB = (51,539,607,552 − 192,937,984) / 16,384
    assert_eq!(j["holds"]["by_memory"], 3_133_952);
    assert_eq!(j["holds"]["binding"], "fds");
}

#[test]
fn defaults_host_warns_with_fix_lines() {
    let r = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-warn"),
        "--target-connections",
        "100000",
        "--json",
    ]);
    assert_eq!(r.code, 0, "WARN is not a failure: {}", r.stderr);
    let j = r.json();
    assert_eq!(j["status"], "WARN");
    assert_eq!(j["shards"], 3, "auto on 4 cores");
    for key in [
        "memory",
        "nofile_soft",
        "fs.file-max",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.core.netdev_max_backlog",
    ] {
        assert_eq!(status(&j, key), "WARN", "{key}: {}", row(&j, key));
        assert!(row(&j, key)["fix"].is_string(), "{key} has a fix");
    }
    for key in [
        "cores",
        "nofile_hard",
        "fs.nr_open",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_wmem",
        "memlock",
        "io_uring",
    ] {
        assert_eq!(status(&j, key), "PASS", "{key}: {}", row(&j, key));
    }
    assert_eq!(
        row(&j, "net.core.somaxconn")["fix"],
        "/etc/sysctl.d/99-xcord-gateway.conf: net.core.somaxconn = 4096"
    );
    assert_eq!(
        row(&j, "net.core.netdev_max_backlog")["fix"],
        "/etc/sysctl.d/99-xcord-gateway.conf: net.core.netdev_max_backlog = 16384"
    );
    // The rmem fix keeps the host's min and max and lowers the default.
    assert_eq!(
        row(&j, "net.ipv4.tcp_rmem")["fix"],
        "/etc/sysctl.d/99-xcord-gateway.conf: net.ipv4.tcp_rmem = 4096 16384 6291456"
    );
    // tcp_mem: need 100,000 pages; never lowers a value: max(recommended, current).
    assert_eq!(
        row(&j, "net.ipv4.tcp_mem")["fix"],
        "/etc/sysctl.d/99-xcord-gateway.conf: net.ipv4.tcp_mem = 196608 262144 393216"
    );
    // Soft nofile 1024 < 100,088 needed; the fix is the recommended 131,072.
    assert!(row(&j, "nofile_soft")["fix"]
        .as_str()
        .unwrap_or_default()
        .contains("LimitNOFILE=131072"));
    // A kernel before 6.6 has no io_uring_disabled: that is fine.
    assert_eq!(row(&j, "io_uring")["value"], "kernel 5.15.0-105-generic");
}

#[test]
fn loadgen_on_the_same_host_needs_ports_and_both_ends() {
    let r = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-warn"),
        "--target-connections",
        "100000",
        "--with-loadgen",
        "--json",
    ]);
    // file-max 150,000 < 100,088 + 100,064: FAIL.
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(status(&j, "fs.file-max"), "FAIL");
    assert_eq!(status(&j, "net.ipv4.ip_local_port_range"), "WARN");
    assert_eq!(
        row(&j, "net.ipv4.ip_local_port_range")["value"],
        "32768 60999 (28,232 ports)"
    );
}

#[test]
fn small_old_host_fails_and_exits_non_zero() {
    let r = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-fail"),
        "--target-connections",
        "100000",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let t = &r.stdout;
    assert!(t.contains("SETTING"), "{t}");
    assert!(t.contains("Result: FAIL"), "{t}");
    // Table rows carry the exact fix.
    let line = |key: &str| -> String {
        t.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no table line for {key}:\n{t}"))
            .to_string()
    };
    let hard = line("ulimit -n (hard)");
    assert!(hard.contains("FAIL"), "{hard}");
    assert!(hard.contains("LimitNOFILE=131072"), "{hard}");
    let nr = line("fs.nr_open");
    assert!(
        nr.contains("FAIL") && nr.contains("fs.nr_open = 1048576"),
        "{nr}"
    );
    let ml = line("ulimit -l");
    assert!(
        ml.contains("FAIL") && ml.contains("LimitMEMLOCK=8M"),
        "{ml}"
    );
    assert!(ml.contains("xcord soft memlock 8192"), "{ml}");
    let io = line("io_uring");
    assert!(io.contains("FAIL") && io.contains("kernel to 5.8"), "{io}");

    let j = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-fail"),
        "--target-connections",
        "100000",
        "--json",
    ])
    .json();
    assert_eq!(j["status"], "FAIL");
    assert_eq!(j["shards"], 1);
    for key in [
        "memory",
        "nofile_hard",
        "fs.nr_open",
        "fs.file-max",
        "net.ipv4.tcp_mem",
        "memlock",
        "io_uring",
    ] {
        assert_eq!(status(&j, key), "FAIL", "{key}: {}", row(&j, key));
    }
    // syncookies on: the small SYN backlog is not the limit.
    assert_eq!(status(&j, "net.ipv4.tcp_max_syn_backlog"), "PASS");
    // 4,096 − 64 − 8
    assert_eq!(j["holds"]["by_fds"], 4_024);
}

#[test]
fn same_host_passes_a_target_it_can_hold() {
    // The failing host still holds 2,000 connections except for the old kernel and memlock.
    let j = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-fail"),
        "--target-connections",
        "2000",
        "--json",
    ])
    .json();
    assert_eq!(status(&j, "nofile_hard"), "PASS");
    assert_eq!(status(&j, "fs.nr_open"), "PASS");
    assert_eq!(status(&j, "memlock"), "FAIL");
    assert_eq!(status(&j, "io_uring"), "FAIL");
}

#[test]
fn io_uring_disabled_is_read() {
    for (v, want) in [("0", "PASS"), ("1", "WARN"), ("2", "FAIL")] {
        let root = scratch("iouring");
        copy_tree(&fixture("proc-pass"), &root);
        put(&root, "sys/kernel/io_uring_disabled", &format!("{v}\n"));
        let r = tune(&[
            "check",
            "--proc-root",
            &root.display().to_string(),
            "--target-connections",
            "1000",
            "--json",
        ]);
        let j = r.json();
        assert_eq!(status(&j, "io_uring"), want, "io_uring_disabled={v}");
        assert_eq!(r.code, if want == "FAIL" { 1 } else { 0 });
    }
}

#[test]
fn unreadable_values_warn_and_never_panic() {
    let root = scratch("broken");
    copy_tree(&fixture("proc-pass"), &root);
    std::fs::remove_file(root.join("sys/net/core/somaxconn")).expect("rm");
    std::fs::remove_file(root.join("self/limits")).expect("rm");
    put(&root, "sys/net/ipv4/tcp_mem", "lots of memory\n");
    put(&root, "sys/net/ipv4/ip_local_port_range", "60999 32768\n");
    put(&root, "meminfo", "MemFree: 12 kB\n");
    put(&root, "sys/kernel/osrelease", "\n");
    let r = tune(&[
        "check",
        "--proc-root",
        &root.display().to_string(),
        "--target-connections",
        "1000",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    for key in [
        "net.core.somaxconn",
        "nofile_hard",
        "nofile_soft",
        "memlock",
        "net.ipv4.tcp_mem",
        "net.ipv4.ip_local_port_range",
        "memory",
    ] {
        assert_eq!(status(&j, key), "WARN", "{key}");
        assert_eq!(row(&j, key)["value"], "unreadable", "{key}");
        assert!(
            row(&j, key)["why"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Cannot tell"),
            "{key}"
        );
    }
    assert_eq!(status(&j, "io_uring"), "WARN");
    assert!(j["holds"]["by_fds"].is_null());
}

#[test]
fn more_shards_than_cores_warns() {
    let j = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-pass"),
        "--shards",
        "32",
        "--json",
    ])
    .json();
    assert_eq!(j["shards"], 32);
    assert_eq!(status(&j, "cores"), "WARN");
    assert_eq!(
        row(&j, "cores")["fix"],
        "xcord-gateway.service [Service]: Environment=XCORD_SHARDS=15"
    );
    assert_eq!(j["target_connections"], 10_000, "the default target");
}

#[test]
fn memory_per_connection_from_a_result() {
    let j = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-pass"),
        "--from",
        &fixture_str("result-fanout.json"),
        "--json",
    ])
    .json();
    // 4,000 B measured RSS + 4,096 B kernel.
    assert_eq!(j["bytes_per_connection"], 8_096);
    // The result without gateway measurements cannot give one: a clear error.
    let r = tune(&[
        "check",
        "--proc-root",
        &fixture_str("proc-pass"),
        "--from",
        &fixture_str("result-no-gateway.json"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no RSS per connection"), "{}", r.stderr);
}

#[test]
fn bad_proc_root_is_a_usage_error() {
    let r = tune(&["check", "--proc-root", "/nonexistent/xcord-proc"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
}

#[test]
fn live_host_check_runs() {
    // Whatever this machine's verdict, check must produce a full report.
    let r = tune(&["check", "--target-connections", "1000", "--json"]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["rows"].as_array().map(Vec::len), Some(15));
}

#[test]
fn shards_subcommand_explains_the_rule() {
    let r = tune(&["shards", "--cores", "8"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .contains("--shards auto on 8 usable cores: 7 shards (1 spare)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("N >= 4 cores -> N - 1 shards"));
    for (cores, shards) in [(1, 1), (2, 2), (3, 3), (4, 3), (64, 63)] {
        let j = tune(&["shards", "--cores", &cores.to_string(), "--json"]).json();
        assert_eq!(j["shards"], shards, "{cores} cores");
    }
    let j = tune(&["shards", "--proc-root", &fixture_str("proc-pass"), "--json"]).json();
    assert_eq!(j["cores"], 16);
    assert_eq!(j["shards"], 15);
}

#[test]
fn pid_reads_that_process_limits() {
    let root = scratch("pid");
    copy_tree(&fixture("proc-pass"), &root);
    // Process 4242 runs with a low hard nofile and 4 allowed CPUs.
    put(
        &root,
        "4242/limits",
        "Limit                     Soft Limit           Hard Limit           Units     \n\
         Max open files            65536                65536                files     \n\
         Max locked memory         8388608              8388608              bytes     \n",
    );
    put(&root, "4242/status", "Cpus_allowed_list:\t0-3\n");
    let r = tune(&[
        "check",
        "--proc-root",
        &root.display().to_string(),
        "--pid",
        "4242",
        "--target-connections",
        "100000",
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(j["shards"], 3, "auto on the process's 4 CPUs");
    assert_eq!(status(&j, "nofile_hard"), "FAIL");
    assert_eq!(row(&j, "nofile_hard")["value"], "65536");
    assert!(j["notes"].to_string().contains("process 4242"));
    let r = tune(&[
        "check",
        "--proc-root",
        &root.display().to_string(),
        "--pid",
        "7",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no process 7"), "{}", r.stderr);
}
