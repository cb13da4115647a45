//! The istio driver on the test control plane: Istio's own CRDs (from
//! Istio's Go modules, by `istiocheck crds`), the controller switched to the
//! driver as `divert install --driver istio` configures it, the
//! VirtualServices it writes for alice's and bob's services and for a
//! gateway's routes of staging, accepted by the API server under Istio's
//! schemas, by Istio's own validation (`istiocheck validate`) and by
//! `istioctl analyze`'s analyzers (`istiocheck analyze`), and everything put
//! back. No Envoy runs here: what Istio's proxies would do
//! with these objects is not tested (docs/mesh.md).

use std::process::Command;

use divert_tests::cluster::build::istiocheck;
use divert_tests::cluster::eventually;
use divert_tests::{ok, output_with_input, run};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;

use super::Scenario;
use divert_controller::copies::istio::{baggage_regex, virtual_service};

/// The phase's name in the scenario.
pub(super) const PHASE_NAME: &str =
    "the istio driver writes Istio's routes, which Istio's CRDs, validation and analyzers accept";

/// The VirtualService CRD's name.
const CRD: &str = "virtualservices.networking.istio.io";
/// A gateway's VirtualService of staging's, which the driver copies.
const EDGE: &str = "movies-edge";

fn virtual_services(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &virtual_service())
}

fn gateways(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = kube::api::ApiResource {
        group: "networking.istio.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "networking.istio.io/v1".to_owned(),
        kind: "Gateway".to_owned(),
        plural: "gateways".to_owned(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Each http route of a VirtualService: its name and its first
/// destination's host.
fn routes(vs: &DynamicObject) -> Vec<(String, String)> {
    vs.data["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["route"][0]["destination"]["host"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// The documents of a YAML stream whose `kind` is `kind`.
fn documents(yaml: &str, kind: &str) -> String {
    yaml.split("\n---\n")
        .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
        .map(|d| format!("---\n{}\n", d.trim_start_matches("---\n")))
        .collect()
}

impl Scenario {
    /// `istiocheck SUBCOMMAND`, which must succeed; its output.
    fn istiocheck(&self, args: &[&str], input: &[u8]) -> String {
        let bin = istiocheck().unwrap_or_else(|e| panic!("istiocheck: {e}"));
        let mut c = Command::new(&bin);
        c.args(args);
        let out = output_with_input(c, input).unwrap_or_else(|e| panic!("istiocheck: {e}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "istiocheck {args:?}:\n{stdout}{stderr}"
        );
        stdout
    }

    /// The controller runs with the driver `driver`, as `divert install
    /// --driver DRIVER` sets it up: the install's ClusterRole and policy for
    /// that driver, the controller's flag, and the public ConfigMap.
    async fn switch_driver(&mut self, driver: &str) {
        let install = {
            let mut c = self.backend.install();
            c.args(["--driver", driver]);
            ok(c, None).await
        };
        // Only what has no generated certificate material: the ClusterRole
        // and the policies (a new certificate would restart every proxy's
        // trust).
        let docs =
            documents(&install, "ClusterRole") + &documents(&install, "ValidatingAdmissionPolicy");
        ok(self.kubectl(&["apply", "-f", "-"]), Some(docs.into_bytes())).await;
        let deployment = self
            .controller()
            .get("divert-controller")
            .await
            .expect("the controller's Deployment");
        let mut args: Vec<String> = deployment
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].args.clone().unwrap_or_default())
            .expect("the controller's args");
        if let Some(i) = args.iter().position(|a| a == "--driver") {
            args.drain(i..(i + 2).min(args.len()));
        }
        if driver != "divert" {
            args.extend(["--driver".to_owned(), driver.to_owned()]);
        }
        let container = json!({"name": "controller", "args": args});
        self.controller()
            .patch(
                "divert-controller",
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"spec": {"template": {"spec": {"containers": [container]}}}}),
                ),
            )
            .await
            .expect("patch the controller's args");
        Api::<ConfigMap>::namespaced(self.client.clone(), "divert")
            .patch(
                "divert-ca",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"driver": driver}})),
            )
            .await
            .expect("patch divert-ca");
        ok(
            self.kubectl(&[
                "-n",
                "divert",
                "rollout",
                "status",
                "deployment/divert-controller",
                "--timeout=180s",
            ]),
            None,
        )
        .await;
        self.find_controller_pod().await;
        // The proxies find the new controller by themselves (with backoff).
        eventually("every proxy reconnects to the new controller", || async {
            run(self.backend.check())
                .await
                .status
                .success()
                .then_some(())
        })
        .await;
    }

    /// The istio driver: Istio's own CRDs are installed; staging gets a
    /// gateway's VirtualService; with the controller on the driver, every
    /// service alice and bob run gets its routes, in staging and in their
    /// namespace, and the gateway's routes a copy in each with the preview
    /// host and the key; the API server (Istio's schemas, Divert's policy),
    /// Istio's validation and its analyzers accept them; a VirtualService of
    /// the user's for a host keeps it, and `divert check` says so; and it is
    /// all undone.
    pub(crate) async fn istio_driver_writes_istios_routes(&mut self) {
        let crds = Api::<CustomResourceDefinition>::all(self.client.clone());
        let had_crds = crds.get_opt(CRD).await.expect("read CRDs").is_some();
        if !had_crds {
            // Without Istio, the driver can write nothing, and says so.
            self.switch_driver("istio").await;
            eventually(
                "divert check says there is no VirtualService kind",
                || async {
                    let checked = ok(self.backend.check(), None).await;
                    checked
                        .contains("VirtualServices: this cluster serves no VirtualService kind")
                        .then_some(())
                },
            )
            .await;
            let yaml = self.istiocheck(&["crds"], b"");
            assert!(yaml.contains(&format!("name: {CRD}")), "{yaml}");
            ok(
                self.kubectl(&["apply", "--server-side", "-f", "-"]),
                Some(yaml.into_bytes()),
            )
            .await;
        }
        let staging = virtual_services(&self.client, "staging");
        eventually("the VirtualService kind is served", || async {
            staging.list(&ListParams::default()).await.ok()
        })
        .await;
        let edge: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": EDGE, "namespace": "staging"},
            "spec": {
                "hosts": ["movies-staging.istio.test"],
                "gateways": ["public"],
                "http": [{"route": [{"destination": {"host": "frontend", "port": {"number": 8080}}}]}]
            }
        }))
        .expect("a VirtualService");
        staging
            .create(&Default::default(), &edge)
            .await
            .expect("create staging's gateway routes");
        // The gateway its routes name, which the analyzers look for.
        let gateway: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "public", "namespace": "staging"},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                             "hosts": ["*.istio.test"]}]
            }
        }))
        .expect("a Gateway");
        gateways(&self.client, "staging")
            .create(&Default::default(), &gateway)
            .await
            .expect("create staging's Gateway");

        if had_crds {
            self.switch_driver("istio").await;
        }

        let wanted = [
            ("staging", "divert-frontend"),
            ("alice", "divert-frontend"),
            ("staging", "divert-rent"),
            ("bob", "divert-rent"),
            ("alice", EDGE),
            ("bob", EDGE),
        ];
        for (ns, name) in wanted {
            let api = virtual_services(&self.client, ns);
            eventually(&format!("the controller writes {ns}/{name}"), || async {
                api.get_opt(name).await.ok()?
            })
            .await;
        }
        let shared = staging
            .get("divert-frontend")
            .await
            .expect("staging/divert-frontend");
        assert!(super::managed(&shared.metadata), "{shared:?}");
        assert_eq!(
            shared.data["spec"]["hosts"],
            json!(["frontend.staging.svc.cluster.local"])
        );
        let routes_now = routes(&shared);
        assert_eq!(
            routes_now.first(),
            Some(&(
                "key-alice-8080".to_owned(),
                "frontend.alice.svc.cluster.local".to_owned()
            )),
            "{routes_now:?}"
        );
        assert_eq!(
            shared.data["spec"]["http"][0]["match"][0]["headers"]["baggage"]["regex"],
            json!(baggage_regex("alice"))
        );
        assert!(
            routes_now.contains(&(
                "own-alice-8080".to_owned(),
                "frontend.alice.svc.cluster.local".to_owned()
            )),
            "{routes_now:?}"
        );
        assert_eq!(
            routes_now.last(),
            Some(&(
                "default-8080".to_owned(),
                "frontend.staging.svc.cluster.local".to_owned()
            )),
            "{routes_now:?}"
        );
        for (ns, to) in [("alice", "frontend.alice"), ("bob", "frontend.staging")] {
            let copy = virtual_services(&self.client, ns)
                .get(EDGE)
                .await
                .expect("the gateway's copy");
            let spec = &copy.data["spec"];
            assert_eq!(
                spec["hosts"],
                json!([format!("movies-{ns}.istio.test")]),
                "{spec}"
            );
            assert_eq!(spec["gateways"], json!(["staging/public"]), "{spec}");
            assert_eq!(
                spec["http"][0]["headers"]["request"]["add"]["baggage"],
                json!(format!("okteto-divert={ns}")),
                "{spec}"
            );
            assert_eq!(
                spec["http"][0]["route"][0]["destination"]["host"],
                json!(format!("{to}.svc.cluster.local")),
                "{spec}"
            );
        }

        // divert preview lists the gateway's preview host.
        let mut preview = self.backend.divert("preview");
        preview.args(["-n", "alice"]);
        let listed = ok(preview, None).await;
        assert!(
            listed.contains("http://frontend-alice.movies.test  http://movies-alice.istio.test"),
            "{listed}"
        );

        // Istio's own validation of every VirtualService the cluster has.
        let all = ok(
            self.kubectl(&["get", "virtualservices", "-A", "-o", "json"]),
            None,
        )
        .await;
        let verdicts = self.istiocheck(&["validate"], all.as_bytes());
        eprintln!("{verdicts}");
        for (ns, name) in wanted {
            assert!(
                verdicts.lines().any(|l| l == format!("ok {ns}/{name}")),
                "{ns}/{name}: {verdicts}"
            );
        }

        // Istio's analyzers (istioctl analyze's) over the namespaces,
        // Services and Istio objects of the cluster: no error.
        let objects = ok(
            self.kubectl(&[
                "get",
                "namespaces,services,virtualservices.networking.istio.io,gateways.networking.istio.io",
                "-A",
                "-o",
                "json",
            ]),
            None,
        )
        .await;
        let analysis = self.istiocheck(&["analyze"], objects.as_bytes());
        eprintln!("istio analyze:\n{analysis}");
        assert!(!analysis.contains("Error ["), "{analysis}");

        // The API server holds the controller to its own VirtualServices.
        let as_controller = self.as_controller().await;
        let refused = virtual_services(&as_controller, "staging")
            .patch(
                EDGE,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"hosts": ["movies-staging.istio.test", "hijack.istio.test"]}}),
                ),
            )
            .await
            .expect_err("the controller may not write staging's own VirtualService");
        assert!(
            refused.to_string().contains("only objects it made"),
            "{refused}"
        );
        // Outside divert namespaces, only a mesh route's shape: not a
        // gateway's host in staging, not staging's host from kube-system.
        let managed = json!({"divert.dev/managed-by": "divert-controller"});
        for (ns, name, spec) in [
            (
                "staging",
                "divert-claim",
                json!({"hosts": ["www.istio.test"], "gateways": ["public"],
                       "http": [{"route": [{"destination": {"host": "frontend"}}]}]}),
            ),
            (
                "kube-system",
                "divert-frontend",
                json!({"hosts": ["frontend.staging.svc.cluster.local"],
                       "http": [{"route": [{"destination": {"host": "frontend.staging.svc.cluster.local"}}]}]}),
            ),
        ] {
            let vs: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": ns, "labels": managed},
                "spec": spec,
            }))
            .expect("a VirtualService");
            let outcome = virtual_services(&as_controller, ns)
                .create(&Default::default(), &vs)
                .await;
            let kept_out = matches!(&outcome, Err(e) if e.to_string().contains("mesh routes"));
            if outcome.is_ok() {
                // Leave nothing behind, even while failing.
                let _ = virtual_services(&self.client, ns)
                    .delete(name, &DeleteParams::default())
                    .await;
            }
            assert!(kept_out, "{ns}/{name}: {:?}", outcome.map(|_| ()));
        }

        // A VirtualService of staging's own for rent keeps rent's host.
        let own: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "rent-retries", "namespace": "staging"},
            "spec": {"hosts": ["rent"], "http": [{"retries": {"attempts": 3},
                "route": [{"destination": {"host": "rent"}}]}]}
        }))
        .expect("a VirtualService");
        staging
            .create(&Default::default(), &own)
            .await
            .expect("create staging's rent-retries");
        // staging/divert-rent gives way to staging's own.
        super::gone(&staging, "divert-rent").await;
        let checked = ok(self.backend.check(), None).await;
        assert!(
            checked.contains(
                "VirtualService staging/divert-rent is not made: the VirtualService \
                 staging/rent-retries of the user's already routes rent.staging.svc.cluster.local"
            ),
            "{checked}"
        );
        assert!(
            virtual_services(&self.client, "bob")
                .get_opt("divert-rent")
                .await
                .expect("get bob/divert-rent")
                .is_some(),
            "bob's own host is not staging's"
        );
        staging
            .delete("rent-retries", &DeleteParams::default())
            .await
            .expect("delete rent-retries");
        eventually("staging/divert-rent comes back", || async {
            staging.get_opt("divert-rent").await.ok()?
        })
        .await;

        // Back to the default driver; the routes it wrote go with the
        // driver (docs/mesh.md), as an admin removes them.
        let manifests = super::handed(&self.manifests, "what divert install printed").clone();
        self.switch_driver("divert").await;
        let plain = documents(&manifests, "ClusterRole")
            + &documents(&manifests, "ValidatingAdmissionPolicy");
        assert!(!plain.contains("virtualservices"), "{plain}");
        ok(
            self.kubectl(&[
                "delete",
                "virtualservices",
                "-A",
                "-l",
                "divert.dev/managed-by=divert-controller",
            ]),
            None,
        )
        .await;
        staging
            .delete(EDGE, &DeleteParams::default())
            .await
            .expect("delete staging's gateway routes");
        gateways(&self.client, "staging")
            .delete("public", &DeleteParams::default())
            .await
            .expect("delete staging's Gateway");
        if !had_crds {
            let yaml = self.istiocheck(&["crds"], b"");
            ok(
                self.kubectl(&["delete", "--wait=true", "--ignore-not-found", "-f", "-"]),
                Some(yaml.into_bytes()),
            )
            .await;
        }
    }
}
