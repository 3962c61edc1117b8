//! The WORKLOAD argument: `deploy/web`, `sts/db`, `ds/x`, `cronjob/x`, `job/x`, `pod/x` (kubectl's
//! short and long names, any case, with or without the API group) or a bare `web`.

/// The owner kinds the webhook names Secrets and Services after (the topmost owner of a pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet, Kind::CronJob, Kind::Job, Kind::Pod];

    /// The kind as the API (and the webhook's owner annotation) spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::CronJob => "CronJob",
            Kind::Job => "Job",
            Kind::Pod => "Pod",
        }
    }

    /// The resource as kubectl takes it (`deployment/web`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::CronJob => "cronjob",
            Kind::Job => "job",
            Kind::Pod => "pod",
        }
    }

    /// kubectl's names of the resource: singular, plural, short name; `.apps`/`.batch` allowed.
    fn parse(text: &str) -> Option<Kind> {
        let lower = text.to_ascii_lowercase();
        let (resource, group) = lower.split_once('.').unwrap_or((&lower, ""));
        let kind = match resource {
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "sts" | "statefulset" | "statefulsets" => Kind::StatefulSet,
            "ds" | "daemonset" | "daemonsets" => Kind::DaemonSet,
            "cj" | "cronjob" | "cronjobs" => Kind::CronJob,
            "job" | "jobs" => Kind::Job,
            "po" | "pod" | "pods" => Kind::Pod,
            _ => return None,
        };
        let expected_group = match kind {
            Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet => "apps",
            Kind::CronJob | Kind::Job => "batch",
            Kind::Pod => "",
        };
        (group.is_empty() || group == expected_group).then_some(kind)
    }
}

/// A parsed WORKLOAD: its kind when given, and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: Option<Kind>,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error("the workload name is empty (expected e.g. deploy/web or web)")]
    EmptyName,
    #[error("{0:?} is not a kind podsftp injects (deploy, sts, ds, cronjob, job or pod; e.g. deploy/web)")]
    UnknownKind(String),
}

impl std::str::FromStr for Workload {
    type Err = WorkloadError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (Some(Kind::parse(kind).ok_or_else(|| WorkloadError::UnknownKind(kind.to_string()))?), name),
            None => (None, text),
        };
        if name.is_empty() {
            return Err(WorkloadError::EmptyName);
        }
        Ok(Workload { kind, name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workload, WorkloadError> {
        text.parse()
    }

    #[test]
    fn kubectl_spellings_of_every_kind() {
        for (text, kind) in [
            ("deploy/web", Kind::Deployment),
            ("Deployment/web", Kind::Deployment),
            ("deployments.apps/web", Kind::Deployment),
            ("sts/web", Kind::StatefulSet),
            ("ds/web", Kind::DaemonSet),
            ("cronjob/web", Kind::CronJob),
            ("cj/web", Kind::CronJob),
            ("job.batch/web", Kind::Job),
            ("pod/web", Kind::Pod),
            ("po/web", Kind::Pod),
        ] {
            assert_eq!(parse(text), Ok(Workload { kind: Some(kind), name: "web".into() }), "{text}");
        }
        assert_eq!(parse("web"), Ok(Workload { kind: None, name: "web".into() }));
    }

    #[test]
    fn wrong_kinds_groups_and_empty_names_are_refused() {
        assert_eq!(parse("svc/web"), Err(WorkloadError::UnknownKind("svc".into())));
        assert_eq!(parse("deploy.batch/web"), Err(WorkloadError::UnknownKind("deploy.batch".into())));
        assert_eq!(parse("/web"), Err(WorkloadError::UnknownKind(String::new())));
        assert_eq!(parse("deploy/"), Err(WorkloadError::EmptyName));
        assert_eq!(parse(""), Err(WorkloadError::EmptyName));
        // A name with a slash in it is kubectl's business to refuse; it is kept whole here.
        assert_eq!(parse("deploy/a/b"), Ok(Workload { kind: Some(Kind::Deployment), name: "a/b".into() }));
    }

    #[test]
    fn resources_parse_back_to_their_kind() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.resource()), Some(kind));
        }
    }
}
