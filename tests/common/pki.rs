//! Certificates made at run time for the TLS tests.

pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    /// A CA, a server certificate for localhost and a client certificate whose
    /// subject CN is `client_name`.
    pub fn new(client_name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params =
            CertificateParams::new(vec![format!("{client_name}.clients.test")]).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, client_name);
        let client = client_params.signed_by(&client_key, &issuer).unwrap();
        Pki {
            ca: ca.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    /// Server settings for TLS with client certificates of this CA, the
    /// PEM files written to `dir`.
    pub fn server_tls(
        &self,
        dir: &std::path::Path,
    ) -> ansible_runner_service::settings::TlsSettings {
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        ansible_runner_service::settings::TlsSettings {
            cert: file("server.pem", &self.server_cert),
            key: file("server.key", &self.server_key),
            client_ca: Some(file("ca.pem", &self.ca)),
        }
    }

    /// A client over TLS to `addr`, presenting the client certificate.
    pub async fn client(
        &self,
        addr: std::net::SocketAddr,
    ) -> ansible_runner_service::pb::job_service_client::JobServiceClient<tonic::transport::Channel>
    {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost")
            .identity(Identity::from_pem(&self.client_cert, &self.client_key));
        let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("a client with a certificate of the CA connects");
        ansible_runner_service::pb::job_service_client::JobServiceClient::new(channel)
    }
}
