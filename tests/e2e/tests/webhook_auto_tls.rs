//! Auto TLS mode against the real apiserver: the webhook, run on the host with `--tls-secret`,
//! `--tls-extra-san 127.0.0.1` and `--webhook-configuration`, creates its certificate Secret,
//! patches the CA bundle into the configuration, and the apiserver then calls it successfully
//! (`failurePolicy: Fail`, so a bad bundle would fail the pod creation).

use std::time::Duration;

use base64::Engine;
use podsftp_e2e::helm::{TestNamespace, eventually, kubectl, kubectl_apply, kubectl_json, require_cluster, try_run};
use podsftp_e2e::webhook::{HostWebhook, Registration, Tls, free_address, is_injected};
use podsftp_webhook::pki::{CertAndKey, SERVING_VALIDITY, issue_serving};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn auto_mode_creates_its_certificate_and_patches_the_ca_bundle() {
    require_cluster();
    let system = TestNamespace::create("wh-auto-system", &[]);
    let apps = TestNamespace::create("wh-auto", &[("podsftp.io/injection", "enabled")]);
    let listen = free_address();
    let registration = Registration::create("wh-auto", &format!("https://{listen}/mutate"), None, "Fail", &[&apps.name]);
    let webhook = HostWebhook::start_at(
        listen,
        &system.name,
        Tls::Auto { secret: "podsftp-webhook-tls".into(), webhook_configuration: registration.name.clone() },
        &["--service-type", "ClusterIP"],
    );

    let secret = kubectl_json(&["get", "secret", "podsftp-webhook-tls", "-n", &system.name]);
    let ca_bundle = secret["data"]["ca.crt"].as_str().expect("ca.crt in the Secret").to_string();
    for key in ["ca.key", "tls.crt", "tls.key"] {
        assert!(secret["data"][key].is_string(), "{key} missing");
    }
    let ca_pem = base64::engine::general_purpose::STANDARD.decode(&ca_bundle).unwrap();
    assert!(String::from_utf8_lossy(&ca_pem).contains("BEGIN CERTIFICATE"));
    eventually("the CA bundle in both webhooks", WAIT, || {
        let configuration = kubectl_json(&["get", "mutatingwebhookconfiguration", &registration.name]);
        let bundles: Vec<&str> =
            configuration["webhooks"].as_array().unwrap().iter().filter_map(|w| w["clientConfig"]["caBundle"].as_str()).collect();
        if bundles == [ca_bundle.as_str(), ca_bundle.as_str()] { Ok(()) } else { Err(format!("{bundles:?}")) }
    });

    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "app", "namespace": "{}"}},
            "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
        apps.name
    ));
    let pod = kubectl_json(&["get", "pod", "app", "-n", &apps.name]);
    assert!(is_injected(&pod), "the apiserver called the webhook over the auto-mode certificate:\n{}", webhook.log_text());

    // A second replica started later shares the same Secret instead of making its own CA.
    let second = HostWebhook::start(
        &system.name,
        Tls::Auto { secret: "podsftp-webhook-tls".into(), webhook_configuration: registration.name.clone() },
        &[],
    );
    let after = kubectl(&["get", "secret", "podsftp-webhook-tls", "-n", &system.name, "-o", "jsonpath={.data.ca\\.crt}"]);
    assert_eq!(after, ca_bundle, "the CA is shared, not replaced");

    // Issue 11, item 16: a pair written to the Secret (as another replica's renewal does) is served
    // by every replica promptly, not at its next hourly check.
    let decode = |key: &str| {
        let value = secret["data"][key].as_str().unwrap_or_else(|| panic!("{key} in the Secret"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).expect("base64")).expect("PEM text")
    };
    let ca = CertAndKey { cert_pem: decode("ca.crt"), key_pem: decode("ca.key") };
    let renewed = issue_serving(&ca, &["127.0.0.1".to_string()], SERVING_VALIDITY).expect("serving certificate");
    let encode = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let patch = serde_json::json!({"data": {"tls.crt": encode(&renewed.cert_pem), "tls.key": encode(&renewed.key_pem)}});
    kubectl(&["patch", "secret", "podsftp-webhook-tls", "-n", &system.name, "--type=merge", "-p", &patch.to_string()]);
    let wanted = pem_body(&renewed.cert_pem);
    for replica in [&webhook, &second] {
        eventually("both replicas serving the renewed certificate", Duration::from_secs(20), || {
            let served = served_certificate(replica);
            if served == wanted { Ok(()) } else { Err(format!("serving {served:.40}…; log:\n{}", replica.log_text())) }
        });
    }
    drop(second);

    // Issue 11, item 16: a serving pair that does not parse is reissued under the same CA (the
    // bundle the apiserver trusts stays valid), by the next replica that starts.
    let broken = serde_json::json!({"data": {"tls.key": encode("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")}});
    kubectl(&["patch", "secret", "podsftp-webhook-tls", "-n", &system.name, "--type=merge", "-p", &broken.to_string()]);
    let third = HostWebhook::start(
        &system.name,
        Tls::Auto { secret: "podsftp-webhook-tls".into(), webhook_configuration: registration.name.clone() },
        &[],
    );
    let repaired = kubectl_json(&["get", "secret", "podsftp-webhook-tls", "-n", &system.name]);
    assert_eq!(repaired["data"]["ca.crt"], secret["data"]["ca.crt"], "the CA was replaced:\n{}", third.log_text());
    assert_ne!(repaired["data"]["tls.key"], broken["data"]["tls.key"], "the broken key was not replaced");
}

/// The base64 body of the first PEM block of `pem`, without line breaks.
fn pem_body(pem: &str) -> String {
    pem.lines().skip_while(|l| !l.starts_with("-----BEGIN")).skip(1).take_while(|l| !l.starts_with("-----END")).collect()
}

/// The certificate a replica presents in a TLS handshake (`openssl s_client`).
fn served_certificate(replica: &HostWebhook) -> String {
    let connect = replica.listen.to_string();
    let output = try_run("openssl", &["s_client", "-connect", &connect, "-servername", "localhost"], Some("")).unwrap_or_default();
    pem_body(&output)
}
