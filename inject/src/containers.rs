//! The two containers a pod gets, `divert-init` and `divert-proxy`, and the
//! volume of the proxy's token for the controller: what the module docs of
//! the crate promise, built here.

use divert_core::names;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Settings;

/// What a pod's annotations keep away from the proxy, as `divert-proxy
/// init` spells it.
pub(crate) struct Skipped {
    pub outbound_ports: Option<String>,
    pub outbound_cidrs: Option<String>,
    pub inbound_ports: Option<String>,
}

pub(crate) fn init_container(settings: &Settings, skipped: Skipped) -> Container {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-port".into(),
        settings.proxy_port.to_string(),
        "--inbound-port".into(),
        settings.inbound_port.to_string(),
        "--admin-port".into(),
        settings.admin_port.to_string(),
        "--proxy-uid".into(),
        settings.proxy_uid.to_string(),
    ];
    if settings.validate {
        args.push("--validate".into());
    }
    if let Some(ports) = skipped.outbound_ports {
        args.extend(["--skip-outbound-ports".into(), ports]);
    }
    if let Some(cidrs) = skipped.outbound_cidrs {
        args.extend(["--skip-outbound-cidrs".into(), cidrs]);
    }
    if let Some(ports) = skipped.inbound_ports {
        args.extend(["--skip-inbound-ports".into(), ports]);
    }
    Container {
        name: names::container::INIT.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![names::container::SIDECAR_COMMAND.into()]),
        args: Some(args),
        resources: Some(settings.init_resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: names::container::XTABLES_VOLUME.into(),
            mount_path: "/run".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

pub(crate) fn proxy_container(settings: &Settings, log_level: String) -> Container {
    let downward = |name: &str, field: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field.into(),
            }),
            ..EnvVarSource::default()
        }),
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(settings.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let uid = settings.proxy_uid;
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        downward(names::env::PROXY_NAMESPACE, "metadata.namespace"),
        downward(names::env::PROXY_POD_NAME, "metadata.name"),
        downward(names::env::PROXY_POD_IP, "status.podIP"),
        value(
            names::env::CONTROLLER_TOKEN,
            format!("{}/{}", names::token::DIR, names::token::FILE),
        ),
    ];
    if let Some(ca) = &settings.controller_ca {
        env.push(value(names::env::CONTROLLER_CA, ca.clone()));
    }
    Container {
        name: names::container::PROXY.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![names::container::SIDECAR_COMMAND.into()]),
        args: Some(vec![
            "proxy".into(),
            "--transparent".into(),
            "--discovery".into(),
            settings.controller_url.clone(),
            "--outbound-port".into(),
            settings.proxy_port.to_string(),
            "--inbound-port".into(),
            settings.inbound_port.to_string(),
            "--admin-addr".into(),
            format!("0.0.0.0:{}", settings.admin_port),
            "--log-level".into(),
            log_level,
        ]),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: names::token::VOLUME.into(),
            mount_path: names::token::DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some(names::port::PROXY_ADMIN_NAME.into()),
            container_port: i32::from(settings.admin_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Up to two minutes for the first routing table from the controller.
        startup_probe: Some(probe("/ready", 1, 120)),
        liveness_probe: Some(probe("/live", 10, 3)),
        readiness_probe: Some(probe("/ready", 10, 3)),
        resources: Some(settings.proxy_resources.clone()),
        restart_policy: settings.native_sidecar.then(|| "Always".into()),
        security_context: Some(SecurityContext {
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The proxy's token for the controller: the pod's service account token
/// for the controller's audience only, short-lived and renewed by the
/// kubelet, mounted in the proxy's container alone.
pub(crate) fn token_volume() -> Volume {
    Volume {
        name: names::token::VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(names::token::AUDIENCE.into()),
                    expiration_seconds: Some(names::token::EXPIRATION_SECONDS),
                    path: names::token::FILE.into(),
                }),
                ..VolumeProjection::default()
            }]),
        }),
        ..Volume::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}
