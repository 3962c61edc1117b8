//! The chart's Grafana dashboard (`charts/podsftp/dashboards/`) as the tests see it: every
//! PromQL expression in it, and the check that each names only metrics a real `/metrics`
//! exposition has. The sidecar's and the webhook's tests each check the names they own.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// Every metric of podsftp starts with it.
const METRIC_PREFIX: &str = "podsftp_";

pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/podsftp/dashboards/podsftp.json")
}

/// Every PromQL expression of the dashboard: panel targets (`expr`, nested rows included) and
/// the queries of template variables.
pub fn expressions() -> Vec<String> {
    let text = std::fs::read_to_string(path()).unwrap_or_else(|e| panic!("{}: {e}", path().display()));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path().display()));
    let mut found = Vec::new();
    collect(&dashboard, &mut found);
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        found.extend(variable["query"]["query"].as_str().or(variable["query"].as_str()).map(str::to_string));
    }
    found
}

fn collect(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => collect(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
        _ => {}
    }
}

/// The podsftp metric names an expression uses (identifiers starting with `podsftp_`).
pub fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).filter(|word| word.starts_with(METRIC_PREFIX))
}

/// The sample names of a Prometheus text exposition.
pub fn exposed(exposition: &str) -> BTreeSet<&str> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .collect()
}

/// What is wrong with the dashboard's expressions for the names `owns` selects: a name the
/// exposition lacks, or an expression that names no podsftp metric at all. Empty when all is well.
pub fn problems(exposition: &str, owns: impl Fn(&str) -> bool) -> Vec<String> {
    let exposed = exposed(exposition);
    let mut problems = Vec::new();
    let expressions = expressions();
    if expressions.is_empty() {
        problems.push(format!("{} has no expressions", path().display()));
    }
    for expr in &expressions {
        if metric_names(expr).next().is_none() {
            problems.push(format!("{expr:?} names no podsftp metric"));
        }
        for name in metric_names(expr).filter(|name| owns(name) && !exposed.contains(name)) {
            problems.push(format!("{expr:?} uses {name}, which /metrics does not expose"));
        }
    }
    problems
}
