//! The app's probes, seen through the proxy.

use divert_core::names;
use k8s_openapi::api::core::v1::{HTTPGetAction, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Settings;

/// The app's `tcpSocket` probes of redirected ports become `httpGet`s of
/// the proxy's TCP probe (`/probe/tcp/<port>` on the admin port): the proxy
/// accepts a connection to a redirected port whether or not the app is up,
/// so the probe as written would always pass. The proxy dials the app's
/// port itself. Probes of skipped ports, and probes with a `host` (not the
/// pod), stay as they are.
pub(crate) fn rewrite_tcp_probes(
    spec: &mut PodSpec,
    settings: &Settings,
    skipped: &[divert_init::PortRange],
) {
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let named = c.ports.clone().unwrap_or_default();
        for probe in [
            &mut c.liveness_probe,
            &mut c.readiness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            let Some(tcp) = probe.tcp_socket.as_ref().filter(|t| t.host.is_none()) else {
                continue;
            };
            let port = match &tcp.port {
                IntOrString::Int(p) => u16::try_from(*p).ok(),
                IntOrString::String(name) => named
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let Some(port) = port.filter(|p| *p != 0) else {
                continue;
            };
            if skipped.iter().any(|r| r.contains(port)) {
                continue;
            }
            probe.tcp_socket = None;
            probe.http_get = Some(HTTPGetAction {
                path: Some(format!("{}{port}", names::path::TCP_PROBE)),
                port: IntOrString::Int(i32::from(settings.admin_port)),
                ..HTTPGetAction::default()
            });
        }
    }
}
