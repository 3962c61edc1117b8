//! Any string as an owner name (or as the `podsftp.io/owner` annotation the controller reads back):
//! nothing panics, the label value, Secret and Service names are valid, and a name that is valid
//! as it is stays readable (`<owner>-sftp`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podsftp_webhook::core::{Owner, names};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (kind, name) = Owner::kind_and_name_from_annotation(text).unwrap_or(("Deployment", text));
    let owner = Owner { api_version: "apps/v1".into(), kind: kind.into(), name: name.into() };
    let label = names::owner_label(&owner);
    assert!(!label.is_empty() && names::is_label_value(&label), "label {label:?}");
    let secret = names::secret_name(name);
    assert!(names::is_dns1123_subdomain(&secret), "Secret {secret:?}");
    let service = names::service_name(name);
    assert!(names::is_dns1035_label(&service), "Service {service:?}");
    let plain = format!("{name}-sftp");
    if names::is_dns1123_subdomain(&plain) {
        assert_eq!(secret, plain);
    }
    if names::is_dns1035_label(&plain) {
        assert_eq!(service, plain);
    }
});
