//! What a customer gets sent: where to connect (from the per-owner Service and the nodes), the
//! login from the per-owner Secret, the host key's fingerprint, and the same as an `sftp` command
//! line and an `sftp://` URL. Pure: the cluster objects come in, text and JSON go out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAddress, Service};
use podsftp_contract::{secret, sidecar};
use serde::Serialize;
use ssh_key::{HashAlg, PublicKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("Service {service} has no address yet ({why}); try again in a moment (kubectl get service {service} -w)")]
    NoAddress { service: String, why: &'static str },
    #[error("Secret {secret} has no {key:?}: the webhook's controller fills missing keys when an injected pod of the workload is created")]
    MissingKey { secret: String, key: &'static str },
    #[error("Secret {secret}: {key:?} is not an OpenSSH public key ({error})")]
    BadHostKey { secret: String, key: &'static str, error: String },
}

/// Where to connect: host, port and, when it needs saying, how that address is reachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub note: Option<String>,
}

/// The Service's SFTP port: the one named as the controller names it, else the first.
fn service_port(service: &Service) -> Option<(u16, Option<u16>)> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    let port = ports.iter().find(|p| p.name.as_deref() == Some(sidecar::SFTP_PORT_NAME)).or(ports.first())?;
    let node_port = port.node_port.and_then(|p| u16::try_from(p).ok());
    Some((u16::try_from(port.port).ok()?, node_port))
}

/// A node's address customers can reach: an external one if the node has one, else its internal IP.
pub fn node_address(addresses: &[NodeAddress]) -> Option<String> {
    let of_type = |wanted: &str| addresses.iter().find(|a| a.type_ == wanted && !a.address.is_empty());
    of_type("ExternalIP").or_else(|| of_type("InternalIP")).map(|a| a.address.clone())
}

/// The address of `service`: its load balancer's, else a node's with the NodePort (`node` is any
/// node's address, if the caller may list nodes), else its ClusterIP with a note saying so.
pub fn endpoint(service: &Service, node: Option<&str>) -> Result<Endpoint, LoginError> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let no_address = |why| LoginError::NoAddress { service: name.clone(), why };
    let spec = service.spec.as_ref().ok_or_else(|| no_address("it has no spec"))?;
    let (port, node_port) = service_port(service).ok_or_else(|| no_address("it has no port"))?;
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if service_type == "LoadBalancer" {
        let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        let host = ingress.into_iter().flatten().find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()));
        return match host {
            Some(host) => Ok(Endpoint { host, port, note: None }),
            None => Err(no_address("its load balancer is still pending")),
        };
    }
    if service_type == "NodePort"
        && let (Some(node), Some(node_port)) = (node, node_port)
    {
        let note = "a node's address: every node of the cluster forwards this NodePort".to_string();
        return Ok(Endpoint { host: node.to_string(), port: node_port, note: Some(note) });
    }
    let cluster_ip = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None");
    let host = cluster_ip.ok_or_else(|| no_address("it has no cluster IP"))?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let note = format!(
        "ClusterIP: reachable only from inside the cluster. From outside: `kubectl port-forward -n {namespace} service/{name} {port}:{port}` \
         and connect to localhost, or set the pod template annotation {}: LoadBalancer",
        podsftp_contract::keys::SERVICE_TYPE
    );
    Ok(Endpoint { host: host.to_string(), port, note: Some(note) })
}

/// A login, ready to print or to serialize (`--output json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    pub namespace: String,
    /// `<Kind>/<name>` of the owner the Secret and Service belong to.
    pub workload: String,
    pub host: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub username: String,
    pub password: String,
    /// `SHA256:…`, as OpenSSH, FileZilla and WinSCP show it on first connection.
    pub host_key_fingerprint: String,
    /// The host's public key line (`ssh-ed25519 AAAA…`), for a known_hosts file.
    pub host_key: String,
    pub sftp_command: String,
    pub url: String,
}

/// One Secret value, present or an error naming the key.
pub fn secret_value<'a>(data: &'a BTreeMap<String, String>, secret_name: &str, key: &'static str) -> Result<&'a str, LoginError> {
    data.get(key).map(String::as_str).ok_or_else(|| LoginError::MissingKey { secret: secret_name.to_string(), key })
}

/// The SHA256 fingerprint of an OpenSSH public key line.
pub fn fingerprint(public_key: &str, secret_name: &str) -> Result<String, LoginError> {
    let key = PublicKey::from_openssh(public_key.trim()).map_err(|error| LoginError::BadHostKey {
        secret: secret_name.to_string(),
        key: secret::HOST_PUBLIC_KEY,
        error: error.to_string(),
    })?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

impl Login {
    /// The login of the owner `workload` from its Secret's decoded `data` and its `endpoint`.
    pub fn new(
        namespace: &str,
        workload: &str,
        secret_name: &str,
        data: &BTreeMap<String, String>,
        endpoint: Endpoint,
    ) -> Result<Login, LoginError> {
        let username = secret_value(data, secret_name, secret::USERNAME)?.trim().to_string();
        let password = secret_value(data, secret_name, secret::PASSWORD)?.to_string();
        let host_key = secret_value(data, secret_name, secret::HOST_PUBLIC_KEY)?.trim().to_string();
        let host_key_fingerprint = fingerprint(&host_key, secret_name)?;
        let Endpoint { host, port, note } = endpoint;
        Ok(Login {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            sftp_command: sftp_command(&username, &host, port),
            url: sftp_url(&username, &host, port),
            host,
            port,
            note,
            username,
            password,
            host_key_fingerprint,
            host_key,
        })
    }

    /// The text a person reads (and pastes into a message to a customer).
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "Workload:  {} (namespace {})\nHost:      {}\nPort:      {}\nUsername:  {}\nPassword:  {}\nHost key:  {}\nCommand:   {}\nURL:       {}\n",
            self.workload,
            self.namespace,
            self.host,
            self.port,
            self.username,
            self.password,
            self.host_key_fingerprint,
            self.sftp_command,
            self.url
        );
        if let Some(note) = &self.note {
            text.push_str(&format!("Note:      {note}\n"));
        }
        text
    }
}

/// `host` as it goes after `@`: an IPv6 address in brackets (sftp and URLs both read that).
fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// `text` as one shell word: unchanged when it holds only characters no shell treats specially,
/// else single-quoted.
pub fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-[]".contains(c);
    if !text.is_empty() && text.chars().all(plain) { text.to_string() } else { format!("'{}'", text.replace('\'', r"'\''")) }
}

/// The OpenSSH `sftp` command line of a login (password asked at the prompt).
pub fn sftp_command(username: &str, host: &str, port: u16) -> String {
    format!("sftp -P {port} {}", shell_word(&format!("{username}@{}", bracketed(host))))
}

/// `sftp://user@host:port` with the user percent-encoded (RFC 3986 userinfo), as FileZilla's
/// quick connect and WinSCP's session URL read it.
pub fn sftp_url(username: &str, host: &str, port: u16) -> String {
    let user: String = username
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("sftp://{user}@{}:{port}", bracketed(host))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus};

    use super::*;

    const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWkhewjRBASIr1HBMdf3XgZpu180qhkhH6bMrdDX90N podsftp host key";

    fn service(type_: &str, ingress: Option<LoadBalancerIngress>) -> Service {
        let mut service = Service::default();
        service.metadata.name = Some("web-sftp".into());
        service.metadata.namespace = Some("shop".into());
        service.spec = Some(ServiceSpec {
            type_: Some(type_.into()),
            cluster_ip: Some("10.96.0.7".into()),
            ports: Some(vec![
                ServicePort { name: Some("other".into()), port: 80, ..Default::default() },
                ServicePort { name: Some(sidecar::SFTP_PORT_NAME.into()), port: 2222, node_port: Some(30022), ..Default::default() },
            ]),
            ..Default::default()
        });
        service.status =
            Some(ServiceStatus { load_balancer: Some(LoadBalancerStatus { ingress: ingress.map(|i| vec![i]) }), ..Default::default() });
        service
    }

    #[test]
    fn load_balancer_then_node_port_then_cluster_ip() {
        let lb = LoadBalancerIngress { ip: Some("203.0.113.5".into()), ..Default::default() };
        let at = |e: Endpoint| (e.host, e.port, e.note.is_some());
        assert_eq!(endpoint(&service("LoadBalancer", Some(lb)), Some("192.0.2.1")).map(at), Ok(("203.0.113.5".into(), 2222, false)));
        let named = LoadBalancerIngress { hostname: Some("lb.example.com".into()), ..Default::default() };
        assert_eq!(endpoint(&service("LoadBalancer", Some(named)), None).map(at), Ok(("lb.example.com".into(), 2222, false)));
        assert_eq!(endpoint(&service("NodePort", None), Some("192.0.2.1")).map(at), Ok(("192.0.2.1".into(), 30022, true)));
        // Nodes not readable: the ClusterIP, with the note saying where it works.
        assert_eq!(endpoint(&service("NodePort", None), None).map(at), Ok(("10.96.0.7".into(), 2222, true)));
        let cluster = endpoint(&service("ClusterIP", None), Some("192.0.2.1")).expect("cluster IP");
        assert_eq!((cluster.host.as_str(), cluster.port), ("10.96.0.7", 2222));
        assert!(cluster.note.is_some_and(|n| n.contains("kubectl port-forward -n shop service/web-sftp 2222:2222")));
    }

    #[test]
    fn a_pending_load_balancer_or_no_cluster_ip_is_no_address_yet() {
        let pending = endpoint(&service("LoadBalancer", None), Some("192.0.2.1"));
        assert!(matches!(pending, Err(LoginError::NoAddress { ref service, .. }) if service == "web-sftp"), "{pending:?}");
        let mut headless = service("ClusterIP", None);
        if let Some(spec) = headless.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        assert!(matches!(endpoint(&headless, None), Err(LoginError::NoAddress { .. })));
    }

    #[test]
    fn node_addresses_prefer_external() {
        let address = |t: &str, a: &str| NodeAddress { type_: t.into(), address: a.into() };
        assert_eq!(node_address(&[address("Hostname", "n1"), address("InternalIP", "10.0.0.1")]).as_deref(), Some("10.0.0.1"));
        assert_eq!(
            node_address(&[address("InternalIP", "10.0.0.1"), address("ExternalIP", "198.51.100.1")]).as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(node_address(&[address("Hostname", "n1")]), None);
    }

    #[test]
    fn commands_and_urls_quote_what_needs_it() {
        assert_eq!(sftp_command("web", "10.0.0.1", 2222), "sftp -P 2222 web@10.0.0.1");
        assert_eq!(sftp_command("o'brien x", "fd00::1", 22), r"sftp -P 22 'o'\''brien x@[fd00::1]'");
        assert_eq!(sftp_url("web", "10.0.0.1", 2222), "sftp://web@10.0.0.1:2222");
        assert_eq!(sftp_url("a@b:c é", "fd00::1", 22), "sftp://a%40b%3Ac%20%C3%A9@[fd00::1]:22");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("$(reboot)"), "'$(reboot)'");
    }

    #[test]
    fn login_from_secret_data() {
        let data: BTreeMap<String, String> = [(secret::USERNAME, "web\n"), (secret::PASSWORD, "pw"), (secret::HOST_PUBLIC_KEY, HOST_KEY)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let endpoint = Endpoint { host: "10.0.0.1".into(), port: 2222, note: None };
        let login = Login::new("shop", "Deployment/web", "web-sftp", &data, endpoint.clone()).expect("login");
        assert_eq!(login.username, "web");
        assert_eq!(login.host_key_fingerprint, "SHA256:Oa2L70PGYDDkHndHbxSbHMgyXrVmspcHBjG95gkyX4c");
        assert!(login.to_text().contains("URL:       sftp://web@10.0.0.1:2222\n"), "{}", login.to_text());
        let json = serde_json::to_value(&login).expect("json");
        assert_eq!(json["sftpCommand"], "sftp -P 2222 web@10.0.0.1");
        assert_eq!(json["port"], 2222);
        assert!(json.get("note").is_none());

        let mut missing = data.clone();
        missing.remove(secret::PASSWORD);
        assert_eq!(
            Login::new("shop", "Deployment/web", "web-sftp", &missing, endpoint.clone()),
            Err(LoginError::MissingKey { secret: "web-sftp".into(), key: secret::PASSWORD })
        );
        missing.insert(secret::PASSWORD.into(), "pw".into());
        missing.insert(secret::HOST_PUBLIC_KEY.into(), "not a key".into());
        assert!(matches!(Login::new("shop", "Deployment/web", "web-sftp", &missing, endpoint), Err(LoginError::BadHostKey { .. })));
    }
}
