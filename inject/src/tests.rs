use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn pod(yaml: &str) -> Pod {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn minimal() -> Pod {
    pod(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
}

fn with_annotation(key: &str, value: &str) -> Pod {
    let mut p = minimal();
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    p
}

fn injected(p: &Pod, ns: &NamespaceInfo, settings: &Settings) -> Pod {
    match inject(p, ns, settings).unwrap() {
        Outcome::Injected(p) => *p,
        other => panic!("not injected: {other:?}"),
    }
}

fn staging() -> NamespaceInfo {
    NamespaceInfo::shared("staging")
}

fn container<'a>(p: &'a Pod, name: &str) -> &'a Container {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap()
}

#[test]
fn defaults() {
    let s = Settings::default();
    assert_eq!(s.image, format!("divert:{VERSION}"));
    assert_eq!(
        s.controller_url,
        "https://divert-controller.divert.svc:8086"
    );
    assert_eq!(s.controller_ca, None, "the CA is the install's own");
    assert_eq!(
        (s.proxy_port, s.inbound_port, s.admin_port, s.proxy_uid),
        (4140, 4143, 4191, 2102)
    );
    assert!(s.native_sidecar && s.validate);
    assert_eq!(s.cluster_domain, "cluster.local");
    assert_eq!(s.log_level, "info");
    let q = |r: &ResourceRequirements, which: &str, k: &str| {
        let map = if which == "requests" {
            &r.requests
        } else {
            &r.limits
        };
        map.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    assert_eq!(
        q(&s.proxy_resources, "requests", "cpu").as_deref(),
        Some("10m")
    );
    assert_eq!(
        q(&s.proxy_resources, "requests", "memory").as_deref(),
        Some("20Mi")
    );
    assert_eq!(
        q(&s.proxy_resources, "limits", "memory").as_deref(),
        Some("128Mi")
    );
    assert_eq!(q(&s.proxy_resources, "limits", "cpu"), None);
    assert_eq!(
        q(&s.init_resources, "limits", "cpu").as_deref(),
        Some("100m")
    );
    // The controller is reached over TLS: its CA must be given.
    assert!(matches!(
        s.validate(),
        Err(InjectError::Settings {
            field: "controller_ca",
            ..
        })
    ));
    assert!(settings().validate().is_ok());
}

#[test]
fn bad_settings_name_the_field() {
    type Edit = fn(&mut Settings);
    let cases: [(&str, Edit); 9] = [
        ("image", |s| s.image = " ".into()),
        ("image_pull_policy", |s| {
            s.image_pull_policy = Some("Sometimes".into())
        }),
        ("controller_url", |s| {
            s.controller_url = "divert-controller:8086".into()
        }),
        ("admin_port", |s| s.admin_port = s.proxy_port),
        ("inbound_port", |s| s.inbound_port = s.proxy_port),
        ("proxy_port", |s| s.proxy_port = 0),
        ("proxy_uid", |s| s.proxy_uid = 0),
        ("cluster_domain", |s| {
            s.cluster_domain = "cluster..local".into()
        }),
        ("log_level", |s| s.log_level = String::new()),
    ];
    for (field, change) in cases {
        let mut s = settings();
        change(&mut s);
        match inject(&minimal(), &staging(), &s) {
            Err(InjectError::Settings { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn settings_reach_the_containers() {
    let settings = Settings {
        image: "registry.example/divert:dev".into(),
        image_pull_policy: Some("Always".into()),
        controller_url: "http://ctl.example:9000".into(),
        proxy_port: 5140,
        inbound_port: 5143,
        admin_port: 5191,
        proxy_uid: 3000,
        validate: false,
        log_level: "debug".into(),
        ..settings()
    };
    let p = injected(&minimal(), &staging(), &settings);
    let init = container(&p, names::container::INIT);
    assert_eq!(
        init.args.as_deref().unwrap(),
        [
            "init",
            "--proxy-port",
            "5140",
            "--inbound-port",
            "5143",
            "--admin-port",
            "5191",
            "--proxy-uid",
            "3000"
        ]
    );
    let proxy = container(&p, names::container::PROXY);
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        [
            "proxy",
            "--transparent",
            "--discovery",
            "http://ctl.example:9000",
            "--outbound-port",
            "5140",
            "--inbound-port",
            "5143",
            "--admin-addr",
            "0.0.0.0:5191",
            "--log-level",
            "debug"
        ]
    );
    for c in [init, proxy] {
        assert_eq!(
            c.command.as_deref(),
            Some(&[names::container::SIDECAR_COMMAND.to_string()][..])
        );
        assert_eq!(c.image.as_deref(), Some("registry.example/divert:dev"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    }
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(3000), Some(3000)));
    assert_eq!(proxy.ports.as_ref().unwrap()[0].container_port, 5191);
    let probe = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.port, IntOrString::Int(5191));
}

#[test]
fn order_of_containers() {
    let mut p = minimal();
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "setup".into(),
        ..Container::default()
    }]);
    let names = |p: &Pod| {
        let spec = p.spec.as_ref().unwrap();
        let init: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let main: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        (init, main)
    };
    let native = injected(&p, &staging(), &settings());
    assert_eq!(
        names(&native),
        (
            vec!["divert-init".into(), "divert-proxy".into(), "setup".into()],
            vec!["app".into()]
        )
    );
    assert_eq!(
        container(&native, names::container::PROXY)
            .restart_policy
            .as_deref(),
        Some("Always")
    );
    let legacy = Settings {
        native_sidecar: false,
        ..settings()
    };
    let legacy = injected(&p, &staging(), &legacy);
    assert_eq!(
        names(&legacy),
        (
            vec!["divert-init".into(), "setup".into()],
            vec!["divert-proxy".into(), "app".into()]
        )
    );
    assert_eq!(
        container(&legacy, names::container::PROXY).restart_policy,
        None
    );
}

#[test]
fn annotations_reach_divert_init() {
    let mut p = with_annotation(names::annotation::SKIP_OUTBOUND_PORTS, " 5432, 6379-6380 ");
    p.metadata.annotations.as_mut().unwrap().insert(
        names::annotation::SKIP_OUTBOUND_CIDRS.into(),
        "10.0.0.0/8,fd00::/8".into(),
    );
    p.metadata.annotations.as_mut().unwrap().insert(
        names::annotation::SKIP_INBOUND_PORTS.into(),
        "9100, 9200-9201".into(),
    );
    let p = injected(&p, &staging(), &settings());
    assert_eq!(
        container(&p, names::container::INIT)
            .args
            .as_deref()
            .unwrap()[9..],
        [
            "--validate",
            "--skip-outbound-ports",
            "5432,6379-6380",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
            "--skip-inbound-ports",
            "9100,9200-9201"
        ]
    );
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(names::annotation::INJECTED),
        Some(&VERSION.to_owned())
    );

    // Empty values add no flag.
    let p = with_annotation(names::annotation::SKIP_OUTBOUND_PORTS, " ");
    let p = injected(&p, &staging(), &settings());
    assert!(
        !container(&p, names::container::INIT)
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--skip"))
    );
}

#[test]
fn the_debug_annotation_turns_on_decision_logs() {
    let log_level = |p: &Pod| {
        let args = container(p, names::container::PROXY).args.clone().unwrap();
        let i = args.iter().position(|a| a == "--log-level").unwrap();
        args[i + 1].clone()
    };
    let on = injected(
        &with_annotation(names::annotation::DEBUG, "true"),
        &staging(),
        &settings(),
    );
    assert_eq!(log_level(&on), "info,divert::decision=debug");
    let off = injected(
        &with_annotation(names::annotation::DEBUG, "false"),
        &staging(),
        &settings(),
    );
    assert_eq!(log_level(&off), "info");
    // A namespace's annotation turns it on for its pods, unless a pod says
    // otherwise.
    let debug_ns = NamespaceInfo {
        debug: true,
        ..staging()
    };
    let plain: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    assert_eq!(
        log_level(&injected(&plain, &debug_ns, &settings())),
        "info,divert::decision=debug"
    );
    let quiet = injected(
        &with_annotation(names::annotation::DEBUG, "false"),
        &debug_ns,
        &settings(),
    );
    assert_eq!(log_level(&quiet), "info");
}

#[test]
fn bad_annotations_are_named() {
    for (key, value, why) in [
        (
            names::annotation::SKIP_OUTBOUND_PORTS,
            "5432,http",
            "not a port",
        ),
        (
            names::annotation::SKIP_OUTBOUND_PORTS,
            "70000",
            "not a port",
        ),
        (names::annotation::SKIP_OUTBOUND_PORTS, "90-80", "reversed"),
        (names::annotation::SKIP_INBOUND_PORTS, "0", "port 0"),
        (
            names::annotation::SKIP_OUTBOUND_PORTS,
            "22,,80",
            "empty entry",
        ),
        (names::annotation::SKIP_OUTBOUND_CIDRS, "10.0.0.0/33", "32"),
        (
            names::annotation::SKIP_OUTBOUND_CIDRS,
            "example.com",
            "not a CIDR",
        ),
        (
            names::annotation::INJECT,
            "disable",
            "neither enabled nor disabled",
        ),
        (names::annotation::DEBUG, "yes", "neither true nor false"),
    ] {
        match inject(&with_annotation(key, value), &staging(), &settings()) {
            Err(e @ InjectError::Annotation { annotation, .. }) => {
                assert_eq!(annotation, key);
                let message = e.to_string();
                assert!(
                    message.starts_with(&format!("annotation {key}: ")) && message.contains(why),
                    "{message}"
                );
            }
            other => panic!("{key}: {value:?}: {other:?}"),
        }
    }
}

#[test]
fn skipped_pods() {
    let s = settings();
    assert_eq!(
        inject(
            &with_annotation(names::annotation::INJECT, "disabled"),
            &staging(),
            &s
        )
        .unwrap(),
        Outcome::Skipped(SkipReason::OptedOut)
    );
    // An opted-out pod's other annotations are not even read.
    let mut p = with_annotation(names::annotation::INJECT, "disabled");
    p.metadata.annotations.as_mut().unwrap().insert(
        names::annotation::SKIP_OUTBOUND_PORTS.into(),
        "nonsense".into(),
    );
    assert_eq!(
        inject(&p, &staging(), &s).unwrap(),
        Outcome::Skipped(SkipReason::OptedOut)
    );
    let mut p = minimal();
    p.metadata.labels = Some(BTreeMap::from([(
        names::annotation::INJECT.into(),
        "disabled".into(),
    )]));
    assert_eq!(
        inject(&p, &staging(), &s).unwrap(),
        Outcome::Skipped(SkipReason::OptedOut)
    );
    // Other label values are someone else's business.
    p.metadata.labels = Some(BTreeMap::from([(
        names::annotation::INJECT.into(),
        "maybe".into(),
    )]));
    assert!(matches!(
        inject(&p, &staging(), &s).unwrap(),
        Outcome::Injected(_)
    ));
    let mut p = minimal();
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        inject(&p, &staging(), &s).unwrap(),
        Outcome::Skipped(SkipReason::HostNetwork)
    );
    for (name, reason) in [
        ("linkerd-proxy", SkipReason::Linkerd),
        ("linkerd-init", SkipReason::Linkerd),
        ("istio-proxy", SkipReason::Istio),
        ("istio-validation", SkipReason::Istio),
    ] {
        let mut p = minimal();
        p.spec.as_mut().unwrap().containers.push(Container {
            name: name.into(),
            ..Container::default()
        });
        assert_eq!(
            inject(&p, &staging(), &s).unwrap(),
            Outcome::Skipped(reason)
        );
        assert!(patch(&p, &staging(), &s).unwrap().is_none());
    }
    for name in [names::container::INIT, names::container::PROXY] {
        let mut p = minimal();
        p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: name.into(),
            ..Container::default()
        }]);
        assert_eq!(
            inject(&p, &staging(), &s).unwrap(),
            Outcome::AlreadyInjected
        );
    }
    let mut p = minimal();
    p.spec = None;
    assert!(matches!(
        inject(&p, &staging(), &s),
        Err(InjectError::NoSpec)
    ));
}

#[test]
fn skip_reasons_read_well() {
    for (reason, short) in [
        (SkipReason::OptedOut, "opted-out"),
        (SkipReason::HostNetwork, "host-network"),
        (SkipReason::Linkerd, "linkerd"),
        (SkipReason::Istio, "istio"),
    ] {
        assert_eq!(reason.as_str(), short);
        assert!(reason.to_string().len() > 20);
    }
    assert!(SkipReason::Linkerd.to_string().contains("Linkerd"));
}

#[test]
fn divert_namespace_env_and_dns() {
    let alice = NamespaceInfo::divert("alice", "staging");
    let mut p = minimal();
    let spec = p.spec.as_mut().unwrap();
    spec.dns_config = Some(PodDNSConfig {
        searches: Some(vec!["staging.svc.cluster.local.".into(), "corp".into()]),
        ..PodDNSConfig::default()
    });
    spec.containers[0].env = Some(vec![EnvVar {
        name: names::env::DIVERTED_NAMESPACE.into(),
        value: Some("mine".into()),
        value_from: None,
    }]);
    let p = injected(&p, &alice, &settings());
    let spec = p.spec.as_ref().unwrap();
    // Already searched (with a trailing dot): not added again.
    assert_eq!(
        spec.dns_config
            .as_ref()
            .unwrap()
            .searches
            .as_deref()
            .unwrap(),
        ["staging.svc.cluster.local.", "corp"]
    );
    let env: Vec<(String, String)> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect()
    };
    assert_eq!(
        env,
        pairs(&[
            (names::env::DIVERTED_NAMESPACE, "mine"),
            (names::env::SHARED_NAMESPACE, "staging"),
            (names::env::OKTETO_SHARED, "staging"),
            (names::env::OKTETO_DIVERTED, "alice"),
        ])
    );
    // Our own containers get none of it.
    let proxy_env: Vec<&str> = container(&p, names::container::PROXY)
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        proxy_env,
        [
            names::env::PROXY_NAMESPACE,
            names::env::PROXY_POD_NAME,
            names::env::PROXY_POD_IP,
            names::env::CONTROLLER_TOKEN,
            names::env::CONTROLLER_CA,
        ]
    );
    assert_eq!(container(&p, names::container::INIT).env, None);

    // Another cluster domain.
    let other_domain = Settings {
        cluster_domain: "k8s.example".into(),
        ..settings()
    };
    let p = injected(&minimal(), &alice, &other_domain);
    assert_eq!(
        p.spec.unwrap().dns_config.unwrap().searches.unwrap(),
        ["staging.svc.k8s.example"]
    );

    // A shared namespace gets neither.
    let p = injected(&minimal(), &staging(), &settings());
    let spec = p.spec.unwrap();
    assert_eq!(spec.dns_config, None);
    assert_eq!(spec.containers[0].env, None);
}

#[test]
fn bad_namespaces() {
    for ns in [
        NamespaceInfo::divert("alice", "Staging"),
        NamespaceInfo::divert("alice", "alice"),
        NamespaceInfo::divert("alice", ""),
        NamespaceInfo::shared("-x"),
    ] {
        assert!(
            matches!(
                inject(&minimal(), &ns, &settings()),
                Err(InjectError::Namespace { .. })
            ),
            "{ns:?}"
        );
    }
}

#[test]
fn tcp_probes_of_redirected_ports_become_the_proxys_tcp_probe() {
    let mut p = with_annotation(names::annotation::SKIP_INBOUND_PORTS, "9100");
    let app = &mut p.spec.as_mut().unwrap().containers[0];
    app.ports = Some(vec![ContainerPort {
        name: Some("web".into()),
        container_port: 8080,
        ..ContainerPort::default()
    }]);
    let tcp = |port: IntOrString, host: Option<&str>| {
        Some(Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port,
                host: host.map(String::from),
            }),
            timeout_seconds: Some(3),
            ..Probe::default()
        })
    };
    app.liveness_probe = tcp(IntOrString::String("web".into()), None);
    app.readiness_probe = tcp(IntOrString::Int(9100), None);
    app.startup_probe = tcp(IntOrString::Int(8080), Some("10.0.0.9"));
    let settings = Settings {
        admin_port: 5191,
        ..settings()
    };
    let out = injected(&p, &staging(), &settings);
    let app = &out.spec.as_ref().unwrap().containers[0];
    let live = app.liveness_probe.as_ref().unwrap();
    assert!(live.tcp_socket.is_none());
    let get = live.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/probe/tcp/8080"));
    assert_eq!(get.port, IntOrString::Int(5191));
    assert_eq!(live.timeout_seconds, Some(3), "the probe's timing is kept");
    // A skipped port, and another host, are probed as written.
    assert_eq!(app.readiness_probe, tcp(IntOrString::Int(9100), None));
    assert_eq!(
        app.startup_probe,
        tcp(IntOrString::Int(8080), Some("10.0.0.9"))
    );
}

#[test]
fn port_and_volume_conflicts() {
    let mut p = minimal();
    p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
        container_port: 4191,
        ..ContainerPort::default()
    }]);
    let err = inject(&p, &staging(), &settings()).unwrap_err();
    assert!(
        matches!(err, InjectError::PortConflict { port: 4191, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"app\""), "{err}");
    // The inbound port too: the app could not bind it beside the proxy.
    p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
        container_port: 4143,
        ..ContainerPort::default()
    }]);
    let err = inject(&p, &staging(), &settings()).unwrap_err();
    assert!(
        matches!(err, InjectError::PortConflict { port: 4143, .. }),
        "{err}"
    );

    let volume = |empty_dir| Volume {
        name: names::container::XTABLES_VOLUME.into(),
        empty_dir,
        ..Volume::default()
    };
    let mut p = minimal();
    p.spec.as_mut().unwrap().volumes = Some(vec![volume(Some(EmptyDirVolumeSource::default()))]);
    let out = injected(&p, &staging(), &settings());
    let names: Vec<String> = out
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        [names::container::XTABLES_VOLUME, names::token::VOLUME],
        "the pod's own xtables emptyDir is kept, the token volume added"
    );
    p.spec.as_mut().unwrap().volumes = Some(vec![volume(None)]);
    assert!(matches!(
        inject(&p, &staging(), &settings()),
        Err(InjectError::VolumeConflict)
    ));
    // A volume of the token's name is not the pod's to have.
    p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: names::token::VOLUME.into(),
        ..Volume::default()
    }]);
    assert!(matches!(
        inject(&p, &staging(), &settings()),
        Err(InjectError::TokenVolumeConflict)
    ));
}

/// The proxy's token for the controller: the pod's own service account,
/// the `divert` audience only, an hour long, in the proxy's container alone.
#[test]
fn the_proxy_alone_gets_a_short_lived_token_for_the_controller() {
    let p = injected(&minimal(), &staging(), &settings());
    let spec = p.spec.as_ref().unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == names::token::VOLUME)
        .expect("the token volume");
    let projected = volume.projected.as_ref().expect("projected");
    let sources = projected.sources.as_ref().unwrap();
    let token = sources[0].service_account_token.as_ref().unwrap();
    assert_eq!(token.audience.as_deref(), Some(names::token::AUDIENCE));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(token.path, names::token::FILE);
    let mounted: Vec<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == names::token::VOLUME)
        })
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(mounted, [names::container::PROXY]);
    let proxy = container(&p, names::container::PROXY);
    let env = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env(names::env::CONTROLLER_TOKEN).as_deref(),
        Some("/var/run/secrets/divert.dev/serviceaccount/token")
    );
    assert_eq!(env(names::env::CONTROLLER_CA).as_deref(), Some(TEST_CA));
}

#[test]
fn patch_paths_escape_slashes() {
    let p = with_annotation("example.com/team", "movies");
    let patch = patch(&p, &staging(), &settings()).unwrap().unwrap();
    let json = serde_json::to_value(&patch).unwrap();
    let paths: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/divert.dev~1injected",
            "/spec/initContainers",
            "/spec/volumes"
        ]
    );
    let mut doc = serde_json::to_value(&p).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let want = injected(&p, &staging(), &settings());
    assert_eq!(doc, serde_json::to_value(&want).unwrap());
}

/// A CA as the proxy gets it; only its PEM form is checked here.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAAMB4XDTI2MDEwMTAwMDAwMFoX\n-----END CERTIFICATE-----\n";

/// The default settings with the install's CA.
pub(crate) fn settings() -> Settings {
    Settings {
        controller_ca: Some(TEST_CA.into()),
        ..Settings::default()
    }
}
