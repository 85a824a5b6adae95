//! rdkafka clients built from leafsync's `[kafka]` settings.

use leafsync_core::config::KafkaConfig;
use rdkafka::ClientConfig;

/// Builds rdkafka client configs from [`KafkaConfig`].
pub trait ClientConfigExt {
    /// A client config with the connection settings and pass-through properties.
    fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// Like [`client_config`](Self::client_config), starting from `defaults` that the
    /// pass-through properties may override.
    fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig;
}

impl ClientConfigExt for KafkaConfig {
    fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.client_properties(defaults) {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leafsync_core::Config;

    #[test]
    fn properties_reach_the_client_and_override_defaults() {
        let cfg = Config::load_with_overrides(
            "[kafka.properties]\n\"fetch.wait.max.ms\" = 50\nsasl_username = \"leaf\"\n",
        )
        .unwrap();
        let c = cfg
            .kafka
            .client_config_with(&[("fetch.wait.max.ms", "500"), ("group.id", "g")]);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("sasl.username"), Some("leaf"));
        assert_eq!(
            c.get("bootstrap.servers"),
            Some(cfg.kafka.bootstrap_servers.as_str())
        );
    }
}
