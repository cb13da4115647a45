//! `divert-proxy init` in network namespaces: what it says when it cannot work, and
//! its redirection check. (The routing through the rules it programs is in
//! transparent.rs.)

use std::process::Output;

use divert_tests::netns::{self, Lan, Netns, sidecar_bin};

fn init(ns: &Netns, args: &[&str]) -> Output {
    ns.command(sidecar_bin())
        .arg("init")
        .args(args)
        .output()
        .expect("run divert init")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn validation_fails_without_rules_and_passes_with_them() {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new();
    let pod = lan.pod("validate");
    for mode in ["legacy", "nft"] {
        let out = init(
            &pod.ns,
            &[
                "--mode",
                mode,
                "--validate-only",
                "--validate-timeout",
                "2s",
            ],
        );
        assert!(!out.status.success(), "no rules yet, yet validation passed");
        let err = stderr(&out);
        assert!(err.contains("not redirected"), "{err}");

        let out = init(&pod.ns, &["--mode", mode, "--validate"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = init(&pod.ns, &["--mode", mode, "--validate-only"]);
        assert!(out.status.success(), "{}", stderr(&out));

        let out = init(&pod.ns, &["--mode", mode, "--cleanup"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn validation_names_a_missing_route() {
    if !netns::available() {
        return;
    }
    // A namespace with only loopback: no default route, as a broken pod.
    let ns = Netns::new("noroute");
    let out = init(&ns, &["--mode", "nft", "--no-ipv6", "--validate"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no route"), "{err}");
}

#[test]
fn without_capabilities_it_says_which_are_missing() {
    if !netns::available() {
        return;
    }
    let ns = Netns::new("nocaps");
    let out = ns
        .command_as(2103, sidecar_bin())
        .args(["init", "--mode", "nft"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("NET_ADMIN") && err.contains("NET_RAW"),
        "{err}"
    );
    // Nothing was programmed.
    let save = ns.command("iptables-nft-save").output().expect("save");
    assert!(!String::from_utf8_lossy(&save.stdout).contains("DIVERT"));
}

#[test]
fn without_iptables_it_names_the_binary() {
    if !netns::available() {
        return;
    }
    let ns = Netns::new("nobin");
    for mode in ["legacy", "nft"] {
        // `env` inside the namespace, so `ip` itself is still found.
        let out = ns
            .command("env")
            .arg("PATH=/nonexistent")
            .arg(sidecar_bin())
            .args(["init", "--mode", mode])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(&format!("iptables-{mode}-")), "{err}");
    }
}

#[test]
fn dry_run_prints_the_restore_input_and_changes_nothing() {
    if !netns::available() {
        return;
    }
    let ns = Netns::new("dryrun");
    let out = ns
        .command(sidecar_bin())
        .args([
            "init",
            "--mode",
            "legacy",
            "--dry-run",
            "--skip-outbound-ports",
            "22,8000-8100",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# iptables-legacy-restore --noflush"),
        "{text}"
    );
    assert!(
        text.contains("# ip6tables-legacy-restore --noflush"),
        "{text}"
    );
    assert!(text.contains("--dports 22,8000:8100"), "{text}");
    assert!(text.contains("-d 10.0.0.0/8"), "{text}");
    assert!(text.contains("-d fd00::/8"), "{text}");
    assert!(text.contains("--to-ports 4140"), "{text}");
    // Inbound: everything but the proxy's own ports to 4143.
    assert!(text.contains("-A PREROUTING -p tcp"), "{text}");
    assert!(text.contains("--dports 4140,4143,4191"), "{text}");
    assert!(text.contains("--to-ports 4143"), "{text}");
    let save = ns.command("iptables-legacy-save").output().expect("save");
    assert!(!String::from_utf8_lossy(&save.stdout).contains("DIVERT"));
}

#[test]
fn auto_mode_keeps_to_legacy_where_legacy_has_rules_else_nft() {
    if !netns::available() {
        return;
    }
    let save = |ns: &Netns, binary: &str| {
        let out = ns.command(binary).output().expect("save");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A fresh pod: nft.
    let fresh = Netns::new("auto-nft");
    let out = init(&fresh, &["--no-ipv6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(save(&fresh, "iptables-nft-save").contains("DIVERT_OUTPUT"));
    assert!(!save(&fresh, "iptables-legacy-save").contains("DIVERT_OUTPUT"));

    // A pod whose legacy tables already hold a rule (an older CNI, say): legacy.
    let legacy = Netns::new("auto-legacy");
    let out = legacy
        .command("iptables-legacy")
        .args(["-A", "OUTPUT", "-p", "icmp", "-j", "ACCEPT"])
        .output()
        .expect("iptables-legacy");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = init(&legacy, &["--no-ipv6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(save(&legacy, "iptables-legacy-save").contains("DIVERT_OUTPUT"));
    assert!(!save(&legacy, "iptables-nft-save").contains("DIVERT_OUTPUT"));
}
