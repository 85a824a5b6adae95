//! The autoscaling settings as deployed, read from the shipped files: the ScaledObject in
//! `keda/` and the worker Deployment in `k8s/`. What a file leaves out takes the default of the
//! system that reads it (KEDA's CRD, the trigger's metadata, the HPA's behavior defaults).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use super::autoscale::{KafkaTrigger, OffsetReset, Policy, PolicyKind, Rules, Select};

/// Everything the drill takes from the deploy files.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub trigger: KafkaTrigger,
    /// KEDA's `pollingInterval`, seconds (default 30).
    pub polling_interval_s: u32,
    /// The HPA's minimum (KEDA's `minReplicaCount`, at least 1).
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub up: Rules,
    pub down: Rules,
    /// The worker pod's `terminationGracePeriodSeconds` (default 30).
    pub grace_period_s: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    kind: Option<String>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: serde_yaml_ng::Value,
}

#[derive(Deserialize, Default)]
struct Meta {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObjectSpec {
    polling_interval: Option<u32>,
    min_replica_count: Option<i32>,
    max_replica_count: Option<i32>,
    #[serde(default)]
    advanced: Advanced,
    triggers: Vec<Trigger>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Advanced {
    #[serde(default)]
    horizontal_pod_autoscaler_config: HpaConfig,
}

#[derive(Deserialize, Default)]
struct HpaConfig {
    #[serde(default)]
    behavior: Behavior,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Behavior {
    scale_up: Option<RulesYaml>,
    scale_down: Option<RulesYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RulesYaml {
    stabilization_window_seconds: Option<u32>,
    select_policy: Option<String>,
    policies: Option<Vec<PolicyYaml>>,
    tolerance: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyYaml {
    r#type: String,
    value: i32,
    period_seconds: u32,
}

#[derive(Deserialize)]
struct Trigger {
    r#type: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentSpec {
    template: PodTemplate,
}

#[derive(Deserialize)]
struct PodTemplate {
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    termination_grace_period_seconds: Option<u32>,
}

/// The documents of `path` of `kind` (and `name`, when given).
fn docs(path: &Path, kind: &str, name: Option<&str>) -> anyhow::Result<Vec<serde_yaml_ng::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = Doc::deserialize(d).with_context(|| format!("parsing {}", path.display()))?;
        if doc.kind.as_deref() == Some(kind)
            && name.is_none_or(|n| doc.metadata.name.as_deref() == Some(n))
        {
            out.push(doc.spec);
        }
    }
    Ok(out)
}

impl Settings {
    /// From the ScaledObject in `scaled_object` and the `leafsync-worker` Deployment in
    /// `deployment`.
    pub fn load(scaled_object: &Path, deployment: &Path) -> anyhow::Result<Self> {
        let so = docs(scaled_object, "ScaledObject", None)?
            .pop()
            .with_context(|| format!("no ScaledObject in {}", scaled_object.display()))?;
        let so: ScaledObjectSpec = serde_yaml_ng::from_value(so)
            .with_context(|| format!("the ScaledObject in {}", scaled_object.display()))?;
        let dep = docs(deployment, "Deployment", Some("leafsync-worker"))?
            .pop()
            .with_context(|| {
                format!("no leafsync-worker Deployment in {}", deployment.display())
            })?;
        let dep: DeploymentSpec = serde_yaml_ng::from_value(dep)
            .with_context(|| format!("the Deployment in {}", deployment.display()))?;
        let trigger = match so.triggers.as_slice() {
            [t] if t.r#type == "apache-kafka" => trigger(&t.metadata)?,
            _ => anyhow::bail!("the drill models exactly one apache-kafka trigger"),
        };
        let b = so.advanced.horizontal_pod_autoscaler_config.behavior;
        Ok(Self {
            trigger,
            // KEDA v2.21.1 defaults: withtriggers_types.go l.51; the HPA it makes gets at least
            // 1 replica (0 is KEDA's own activation) and at most 100 (scaledobject_types.go
            // l.383-398).
            polling_interval_s: so.polling_interval.unwrap_or(30),
            min_replicas: so.min_replica_count.filter(|&m| m > 0).unwrap_or(1),
            max_replicas: so.max_replica_count.unwrap_or(100),
            up: rules(b.scale_up, Rules::default_up())?,
            down: rules(b.scale_down, Rules::default_down())?,
            grace_period_s: dep
                .template
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30),
        })
    }

    /// The settings for a drill `k` times faster than real time: the lag threshold divided by
    /// `k` (it is a rate × a catch-up time, and the rates stay real). The windows and periods
    /// stay as they are, in model time, which the drill runs `k` times faster.
    pub fn time_scaled(&self, k: f64) -> Self {
        Self {
            trigger: KafkaTrigger {
                lag_threshold: ((self.trigger.lag_threshold as f64 / k).round() as i64).max(1),
                ..self.trigger.clone()
            },
            ..self.clone()
        }
    }
}

/// The trigger's metadata with the scaler's defaults (apache_kafka_scaler.go l.56-65).
fn trigger(m: &BTreeMap<String, String>) -> anyhow::Result<KafkaTrigger> {
    let flag = |key: &str| -> anyhow::Result<bool> {
        m.get(key)
            .map_or(Ok(false), |v| v.parse())
            .with_context(|| format!("trigger metadata `{key}`"))
    };
    Ok(KafkaTrigger {
        lag_threshold: m
            .get("lagThreshold")
            .map_or(Ok(10), |v| v.parse())
            .context("trigger metadata `lagThreshold`")?,
        offset_reset: match m.get("offsetResetPolicy").map(String::as_str) {
            None | Some("latest") => OffsetReset::Latest,
            Some("earliest") => OffsetReset::Earliest,
            Some(other) => anyhow::bail!("trigger metadata `offsetResetPolicy`: {other}"),
        },
        allow_idle_consumers: flag("allowIdleConsumers")?,
        limit_to_partitions_with_lag: flag("limitToPartitionsWithLag")?,
    })
}

/// A direction's rules over its defaults: each field given replaces the default's, policies as
/// a whole (pkg/apis/autoscaling/v2/defaults.go l.121-139, `copyHPAScalingRules`).
fn rules(given: Option<RulesYaml>, mut r: Rules) -> anyhow::Result<Rules> {
    let Some(g) = given else { return Ok(r) };
    if let Some(s) = g.stabilization_window_seconds {
        r.stabilization_s = s;
    }
    if let Some(p) = g.select_policy {
        r.select = match p.as_str() {
            "Max" => Select::Max,
            "Min" => Select::Min,
            "Disabled" => Select::Disabled,
            other => anyhow::bail!("selectPolicy {other}"),
        };
    }
    if let Some(ps) = g.policies {
        r.policies = ps
            .into_iter()
            .map(|p| {
                let kind = match p.r#type.as_str() {
                    "Pods" => PolicyKind::Pods,
                    "Percent" => PolicyKind::Percent,
                    other => anyhow::bail!("policy type {other}"),
                };
                Ok(Policy {
                    kind,
                    value: p.value,
                    period_s: p.period_seconds,
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(t) = g.tolerance {
        // A Quantity: "0.05" or a number.
        let v = match &t {
            serde_yaml_ng::Value::Number(n) => n.as_f64(),
            serde_yaml_ng::Value::String(s) => s.parse().ok(),
            _ => None,
        };
        r.tolerance = v.with_context(|| format!("tolerance {t:?}"))?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
    }

    #[test]
    fn the_shipped_files_give_their_values_and_the_rest_defaults() {
        let s = Settings::load(
            &repo("keda/scaledobject.yaml"),
            &repo("k8s/base/worker.yaml"),
        )
        .unwrap();
        // Spelled out in keda/scaledobject.yaml and k8s/base/worker.yaml.
        assert_eq!(s.trigger.lag_threshold, 80_000);
        assert_eq!(s.trigger.offset_reset, OffsetReset::Earliest);
        assert!(!s.trigger.allow_idle_consumers);
        assert!(!s.trigger.limit_to_partitions_with_lag);
        assert_eq!((s.min_replicas, s.max_replicas), (1, 18));
        assert_eq!(s.polling_interval_s, 15);
        assert_eq!(s.grace_period_s, 30);
        assert_eq!(s.up.stabilization_s, 0);
        assert_eq!(
            s.up.policies,
            vec![Policy {
                kind: PolicyKind::Pods,
                value: 4,
                period_s: 30
            }]
        );
        assert_eq!(s.down.stabilization_s, 300);
        assert_eq!(s.down.select, Select::Max, "default");
        assert_eq!(s.down.tolerance, 0.1, "default");
    }

    #[test]
    fn a_bare_scaled_object_takes_every_default() {
        let dir = std::env::temp_dir().join(format!("fleet-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let so = dir.join("so.yaml");
        std::fs::write(
            &so,
            "kind: ScaledObject\nspec:\n  triggers:\n    - type: apache-kafka\n      metadata: {}\n",
        )
        .unwrap();
        let dep = dir.join("dep.yaml");
        std::fs::write(
            &dep,
            "kind: Service\nmetadata: {name: x}\n---\nkind: Deployment\nmetadata: {name: leafsync-worker}\nspec:\n  template:\n    spec: {}\n",
        )
        .unwrap();
        let s = Settings::load(&so, &dep).unwrap();
        assert_eq!(s.trigger.lag_threshold, 10);
        assert_eq!(s.trigger.offset_reset, OffsetReset::Latest);
        assert_eq!(
            (s.polling_interval_s, s.min_replicas, s.max_replicas),
            (30, 1, 100)
        );
        assert_eq!(s.up, Rules::default_up());
        assert_eq!(s.down, Rules::default_down());
        assert_eq!(s.grace_period_s, 30);
        let k = s.time_scaled(4.0);
        assert_eq!(k.trigger.lag_threshold, 3, "10 / 4, rounded");
        assert_eq!(k.down, s.down, "windows stay in model time");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
