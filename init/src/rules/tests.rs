use super::render::*;
use super::save::*;
use super::*;
use crate::cidr::parse_cidr_list;
use crate::ports::parse_port_list;
use crate::{Family, Settings};

/// Real `iptables-legacy-save` output after `divert-proxy init --proxy-gid 2103
/// --skip-outbound-ports 22 --skip-outbound-cidrs 10.0.0.0/8
/// --skip-inbound-ports 9000`, with a foreign nat rule and a foreign filter
/// table present.
const LEGACY_PROGRAMMED: &str = include_str!("../../testdata/legacy-programmed.txt");
/// Real `iptables-nft-save` output: our jump twice and once in an older
/// form, beside foreign rules and a foreign chain.
const NFT_DUPLICATED: &str = include_str!("../../testdata/nft-duplicated.txt");
/// Real `ip6tables-nft-save -t nat` output with our rules.
const NFT6_PROGRAMMED: &str = include_str!("../../testdata/nft6-programmed.txt");
/// Real `iptables-nft-save -t nat` output of a fresh network namespace.
const NFT_FRESH: &str = include_str!("../../testdata/nft-fresh.txt");

fn settings() -> Settings {
    Settings::default()
}

fn nat(text: &str) -> Table {
    match parse_save(text) {
        Ok(rs) => rs.table("nat").cloned().unwrap_or_else(Table::empty_nat),
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

#[test]
fn renders_defaults_v4() {
    let input = program_input(&settings(), Family::V4, &Table::empty_nat());
    assert_eq!(
        input,
        r#"*nat
:DIVERT_OUTPUT - [0:0]
:DIVERT_INBOUND - [0:0]
:DIVERT_REDIRECT - [0:0]
-A DIVERT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "divert: proxy uid" -j RETURN
-A DIVERT_OUTPUT -o lo -m comment --comment "divert: loopback" -j RETURN
-A DIVERT_OUTPUT -p tcp -m comment --comment "divert: redirect outbound" -j DIVERT_REDIRECT
-A DIVERT_REDIRECT -p tcp -m comment --comment "divert: to the proxy" -j REDIRECT --to-ports 4140
-A DIVERT_INBOUND -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment "divert: not to this pod" -j RETURN
-A DIVERT_INBOUND -p tcp -m multiport --dports 4140,4143,4191 -m comment --comment "divert: proxy ports" -j RETURN
-A DIVERT_INBOUND -p tcp -m comment --comment "divert: to the inbound proxy" -j REDIRECT --to-ports 4143
-A OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-A PREROUTING -p tcp -m comment --comment "divert: inbound" -j DIVERT_INBOUND
COMMIT
"#
    );
}

#[test]
fn renders_gid_ports_and_cidrs_per_family() {
    let s = Settings {
        proxy_port: 15001,
        inbound_port: 15006,
        admin_port: 15020,
        proxy_uid: 1337,
        proxy_gid: Some(1338),
        skip_outbound_ports: parse_port_list("22,6000-6010").unwrap_or_default(),
        skip_inbound_ports: parse_port_list("9000,9100-9101").unwrap_or_default(),
        skip_outbound_cidrs: parse_cidr_list("10.0.0.0/8,fd00::/8,169.254.169.254")
            .unwrap_or_default(),
        ..Settings::default()
    };
    let v4 = program_input(&s, Family::V4, &Table::empty_nat());
    assert_eq!(
        v4,
        r#"*nat
:DIVERT_OUTPUT - [0:0]
:DIVERT_INBOUND - [0:0]
:DIVERT_REDIRECT - [0:0]
-A DIVERT_OUTPUT -m owner --uid-owner 1337 -m comment --comment "divert: proxy uid" -j RETURN
-A DIVERT_OUTPUT -m owner --gid-owner 1338 -m comment --comment "divert: proxy gid" -j RETURN
-A DIVERT_OUTPUT -o lo -m comment --comment "divert: loopback" -j RETURN
-A DIVERT_OUTPUT -p tcp -m multiport --dports 22,6000:6010 -m comment --comment "divert: skip outbound ports" -j RETURN
-A DIVERT_OUTPUT -d 10.0.0.0/8 -m comment --comment "divert: skip outbound cidr" -j RETURN
-A DIVERT_OUTPUT -d 169.254.169.254/32 -m comment --comment "divert: skip outbound cidr" -j RETURN
-A DIVERT_OUTPUT -p tcp -m comment --comment "divert: redirect outbound" -j DIVERT_REDIRECT
-A DIVERT_REDIRECT -p tcp -m comment --comment "divert: to the proxy" -j REDIRECT --to-ports 15001
-A DIVERT_INBOUND -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment "divert: not to this pod" -j RETURN
-A DIVERT_INBOUND -p tcp -m multiport --dports 15001,15006,15020 -m comment --comment "divert: proxy ports" -j RETURN
-A DIVERT_INBOUND -p tcp -m multiport --dports 9000,9100:9101 -m comment --comment "divert: skip inbound ports" -j RETURN
-A DIVERT_INBOUND -p tcp -m comment --comment "divert: to the inbound proxy" -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-A PREROUTING -p tcp -m comment --comment "divert: inbound" -j DIVERT_INBOUND
COMMIT
"#
    );
    let v6 = program_input(&s, Family::V6, &Table::empty_nat());
    assert!(
        v6.contains("-A DIVERT_OUTPUT -d fd00::/8 -m comment"),
        "{v6}"
    );
    assert!(!v6.contains("10.0.0.0"), "{v6}");
    assert!(v6.contains("--dports 22,6000:6010"), "{v6}");
}

#[test]
fn splits_skip_ports_over_fifteen_entries() {
    let s = Settings {
        skip_outbound_ports: parse_port_list("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15-16,17")
            .unwrap_or_default(),
        ..Settings::default()
    };
    let input = program_input(&s, Family::V4, &Table::empty_nat());
    let port_rules: Vec<&str> = input
        .lines()
        .filter(|l| l.contains("skip outbound ports"))
        .collect();
    assert_eq!(port_rules.len(), 2, "{input}");
    // 14 ports leave one entry free; the range needs two.
    assert!(
        port_rules[0].contains("--dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14 "),
        "{input}"
    );
    assert!(port_rules[1].contains("--dports 15:16,17 "), "{input}");
}

#[test]
fn include_cidrs_limit_redirection_per_family() {
    let s = Settings {
        include_outbound_cidrs: parse_cidr_list("10.96.0.0/12,10.244.0.0/16").unwrap_or_default(),
        skip_outbound_cidrs: parse_cidr_list("10.96.0.1").unwrap_or_default(),
        ..Settings::default()
    };
    let v4 = program_input(&s, Family::V4, &Table::empty_nat());
    let tail: Vec<&str> = v4
        .lines()
        .filter(|l| l.starts_with("-A DIVERT_OUTPUT -d"))
        .collect();
    assert_eq!(
        tail,
        [
            r#"-A DIVERT_OUTPUT -d 10.96.0.1/32 -m comment --comment "divert: skip outbound cidr" -j RETURN"#,
            r#"-A DIVERT_OUTPUT -d 10.96.0.0/12 -m comment --comment "divert: include outbound cidr" -j DIVERT_REDIRECT"#,
            r#"-A DIVERT_OUTPUT -d 10.244.0.0/16 -m comment --comment "divert: include outbound cidr" -j DIVERT_REDIRECT"#,
        ]
    );
    assert!(
        !v4.contains("redirect outbound"),
        "no catch-all with an include list: {v4}"
    );
    // IPv6 has no include CIDR: its chains exist but redirect nothing.
    let v6 = program_input(&s, Family::V6, &Table::empty_nat());
    assert!(!v6.contains("-j DIVERT_REDIRECT"), "{v6}");
    assert!(v6.contains("-A OUTPUT -p tcp"), "{v6}");
}

#[test]
fn our_rendering_is_what_iptables_save_prints() {
    // The fixture was produced by programming these settings for real.
    let s = Settings {
        proxy_gid: Some(2103),
        skip_outbound_ports: parse_port_list("22").unwrap_or_default(),
        skip_outbound_cidrs: parse_cidr_list("10.0.0.0/8").unwrap_or_default(),
        skip_inbound_ports: parse_port_list("9000").unwrap_or_default(),
        ..Settings::default()
    };
    let rendered = program_input(&s, Family::V4, &Table::empty_nat());
    let ours = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A") && l.contains("divert:"))
            .map(String::from)
            .collect()
    };
    let mut want = ours(&rendered);
    let mut got = ours(LEGACY_PROGRAMMED);
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let v6 = program_input(&Settings::default(), Family::V6, &Table::empty_nat());
    let (mut want, mut got) = (ours(&v6), ours(NFT6_PROGRAMMED));
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn parses_real_save_output() {
    let rs = match parse_save(LEGACY_PROGRAMMED) {
        Ok(rs) => rs,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = rs.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["nat", "filter"]);
    let nat = nat(LEGACY_PROGRAMMED);
    let user: Vec<&str> = nat
        .chains
        .iter()
        .filter(|c| !c.is_builtin())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(user, ["DIVERT_INBOUND", "DIVERT_OUTPUT", "DIVERT_REDIRECT"]);
    let jump = nat
        .rules
        .iter()
        .find(|r| r.chain == "OUTPUT" && r.targets_ours());
    assert_eq!(
        jump.map(|r| r.spec.as_str()),
        Some(r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#)
    );
    let redirect = nat.rules.iter().find(|r| r.chain == REDIRECT_CHAIN);
    assert_eq!(redirect.and_then(|r| r.target.as_deref()), Some("REDIRECT"));
    assert!(rs.has_content());

    let fresh = match parse_save(NFT_FRESH) {
        Ok(rs) => rs,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(fresh.table("nat"), Some(&Table::empty_nat()));
    assert!(!fresh.has_content());
    assert_eq!(parse_save(""), Ok(Ruleset::default()));
}

#[test]
fn refuses_what_it_does_not_understand() {
    for bad in [
        "-A OUTPUT -j RETURN\n",
        "*nat\n-A OUTPUT -j RETURN\n",
        "*nat\n-A OUTPUT -m comment --comment \"open\n",
        "*nat\n:OUTPUT\nCOMMIT\n",
        "*nat\niptables: something odd\nCOMMIT\n",
    ] {
        assert!(parse_save(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tokenizes_quotes_and_escapes() {
    assert_eq!(
        tokenize(r#"-m comment --comment "a \"-j\" b" -j X"#),
        Ok(vec!["-m", "comment", "--comment", r#"a "-j" b"#, "-j", "X"]
            .into_iter()
            .map(String::from)
            .collect())
    );
    // A `-j` inside a comment is not the target.
    let rs = parse_save(
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment \"-j DIVERT_OUTPUT\" -j RETURN\nCOMMIT\n",
    );
    let target = rs.ok().and_then(|rs| rs.tables[0].rules[0].target.clone());
    assert_eq!(target.as_deref(), Some("RETURN"));
}

#[test]
fn quotes_like_iptables_save() {
    assert_eq!(save_quote("divert"), "divert");
    assert_eq!(save_quote("divert: outbound"), "\"divert: outbound\"");
    assert_eq!(save_quote("it's \"x\""), r#""it\'s \"x\"""#);
}

#[test]
fn jump_present_once_is_kept() {
    let nat = nat(LEGACY_PROGRAMMED);
    assert_eq!(plan_jump(&nat, Direction::Outbound), JumpPlan::default());
    assert_eq!(plan_jump(&nat, Direction::Inbound), JumpPlan::default());
    let input = program_input(&settings(), Family::V4, &nat);
    assert!(!input.contains("-A OUTPUT"), "{input}");
    assert!(!input.contains("-A PREROUTING"), "{input}");
    assert!(!input.contains("-D "), "{input}");
}

#[test]
fn duplicated_or_other_jumps_are_replaced_by_one() {
    let nat = nat(NFT_DUPLICATED);
    let plan = plan_jump(&nat, Direction::Outbound);
    assert_eq!(
        plan.delete,
        [
            r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#,
            r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#,
            "-j DIVERT_OUTPUT",
        ]
    );
    assert!(plan.add);
    let input = program_input(&settings(), Family::V4, &nat);
    assert_eq!(input.matches("-D OUTPUT").count(), 3, "{input}");
    assert_eq!(input.matches("-A OUTPUT").count(), 1, "{input}");
    // Foreign OUTPUT rules are left alone.
    assert!(!input.contains("udp"), "{input}");
}

#[test]
fn jump_in_another_form_alone_is_replaced() {
    let nat = nat(
        "*nat\n:OUTPUT ACCEPT [0:0]\n:DIVERT_OUTPUT - [0:0]\n-A OUTPUT -j DIVERT_OUTPUT\nCOMMIT\n",
    );
    let plan = plan_jump(&nat, Direction::Outbound);
    assert_eq!(
        plan,
        JumpPlan {
            delete: vec!["-j DIVERT_OUTPUT".into()],
            add: true
        }
    );
}

#[test]
fn cleanup_removes_ours_only() {
    let nat = nat(NFT_DUPLICATED);
    assert_eq!(
        cleanup_input(&nat).as_deref(),
        Some(
            r#"*nat
-D OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-D OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-D OUTPUT -j DIVERT_OUTPUT
-D FOREIGN -p tcp -j DIVERT_REDIRECT
-F DIVERT_OUTPUT
-F DIVERT_REDIRECT
-X DIVERT_OUTPUT
-X DIVERT_REDIRECT
COMMIT
"#
        )
    );
    assert_eq!(cleanup_input(&Table::empty_nat()), None);
    assert_eq!(cleanup_input(&self::nat(NFT_FRESH)), None);
    let foreign_only =
        self::nat("*nat\n:OUTPUT ACCEPT [0:0]\n:MINE - [0:0]\n-A OUTPUT -p udp -j MINE\nCOMMIT\n");
    assert_eq!(cleanup_input(&foreign_only), None);
}
