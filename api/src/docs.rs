//! `docs/reference.md`: the field-by-field CRD reference, rendered from the
//! same schemas as `config/crd/` (`cargo run -p lifeboat-api --bin crdgen`
//! writes both; a test fails when the checked-in file is stale).

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::crd::{GeneratedFile, crds};

/// Where the reference lives, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/reference.md";

/// The reference as a generated file.
pub fn reference_file() -> GeneratedFile {
    GeneratedFile {
        path: REFERENCE_PATH,
        contents: render_reference(&crds()),
    }
}

/// Renders the Markdown reference of these CRDs.
pub fn render_reference(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from api/src by `cargo run -p lifeboat-api --bin crdgen`. Do not edit. -->\n\
         # API reference\n\n\
         Every field of Lifeboat's two custom resources, generated from the Rust types\n\
         in `api/src` (the same schemas as `config/crd/`). [api.md](api.md) explains\n\
         how the fields work together; [runbook.md](runbook.md) what each condition\n\
         reason means.\n\n",
    );
    for crd in crds {
        render_crd(&mut out, crd);
    }
    out
}

fn render_crd(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let Some(version) = crd.spec.versions.first() else {
        return;
    };
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let _ = writeln!(out, "## {}\n", names.kind);
    let _ = writeln!(
        out,
        "`{}/{}`, namespaced; plural `{}`, short names {}, category `{}`.\n",
        crd.spec.group,
        version.name,
        names.plural,
        names
            .short_names
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", "),
        names.categories.as_deref().unwrap_or_default().join("`, `"),
    );
    if let Some(description) = schema["description"].as_str() {
        let _ = writeln!(out, "{description}\n");
    }
    if let Some(columns) = &version.additional_printer_columns {
        out.push_str("`kubectl get` columns (`-o wide` adds those of priority 1):\n\n");
        out.push_str("| column | priority | value |\n| --- | --- | --- |\n");
        for column in columns {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` |",
                column.name,
                column.priority.unwrap_or(0),
                cell(&column.json_path)
            );
        }
        out.push('\n');
    }
    for part in ["spec", "status"] {
        let node = &schema["properties"][part];
        if node.is_null() {
            continue;
        }
        let _ = writeln!(out, "### {}.{part}\n", names.kind);
        out.push_str("| field | type | description | constraints |\n| --- | --- | --- | --- |\n");
        let mut rules = Vec::new();
        walk(out, &mut rules, part, node, false);
        out.push('\n');
        if !rules.is_empty() {
            out.push_str("Validation rules (CEL, checked by the API server):\n\n");
            out.push_str("| at | rule | message |\n| --- | --- | --- |\n");
            for (path, rule, message) in rules {
                let _ = writeln!(out, "| `{path}` | `{}` | {} |", cell(&rule), cell(&message));
            }
            out.push('\n');
        }
    }
}

/// One table row per field, depth first.
fn walk(
    out: &mut String,
    rules: &mut Vec<(String, String, String)>,
    path: &str,
    node: &Value,
    required: bool,
) {
    let _ = writeln!(
        out,
        "| `{path}` | {} | {} | {} |",
        type_of(node),
        cell(&first_paragraph(node["description"].as_str().unwrap_or(""))),
        cell(&constraints(node, required))
    );
    collect_rules(rules, path, node);
    let required_here: Vec<&str> = node["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(properties) = node["properties"].as_object() {
        for (key, child) in properties {
            walk(
                out,
                rules,
                &format!("{path}.{key}"),
                child,
                required_here.contains(&key.as_str()),
            );
        }
    }
    let items = &node["items"];
    if items.is_object() {
        collect_rules(rules, &format!("{path}[]"), items);
        let item_required: Vec<&str> = items["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = items["properties"].as_object() {
            for (key, child) in properties {
                walk(
                    out,
                    rules,
                    &format!("{path}[].{key}"),
                    child,
                    item_required.contains(&key.as_str()),
                );
            }
        }
    }
}

fn collect_rules(rules: &mut Vec<(String, String, String)>, path: &str, node: &Value) {
    if let Some(list) = node["x-kubernetes-validations"].as_array() {
        for rule in list {
            rules.push((
                path.to_owned(),
                rule["rule"].as_str().unwrap_or_default().to_owned(),
                rule["message"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
}

fn type_of(node: &Value) -> String {
    let base = node["type"].as_str().unwrap_or("");
    match base {
        "array" => format!("[]{}", type_of(&node["items"])),
        "object" if node["additionalProperties"].is_object() => {
            format!("map[string]{}", type_of(&node["additionalProperties"]))
        }
        "string" | "integer" => match node["format"].as_str() {
            Some(format) => format!("{base} ({format})"),
            None => base.to_owned(),
        },
        "" => "any".to_owned(),
        other => other.to_owned(),
    }
}

fn constraints(node: &Value, required: bool) -> String {
    let mut parts = Vec::new();
    if required {
        parts.push("required".to_owned());
    }
    if let Some(default) = node.get("default") {
        parts.push(format!("default `{default}`"));
    }
    if let Some(values) = node["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    for (key, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
        ("maxProperties", "entries ≤"),
    ] {
        if let Some(n) = node[key].as_i64() {
            parts.push(format!("{label} {n}"));
        }
    }
    if let Some(pattern) = node["pattern"].as_str() {
        parts.push(format!("pattern `{pattern}`"));
    }
    match node["x-kubernetes-list-type"].as_str() {
        Some("map") => {
            let keys: Vec<&str> = node["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(format!("unique by {}", keys.join(", ")));
        }
        Some("set") => parts.push("unique items".to_owned()),
        _ => {}
    }
    parts.join("; ")
}

fn first_paragraph(text: &str) -> String {
    text.split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_both_kinds_is_listed() {
        let text = reference_file().contents;
        for field in [
            "`spec.selector.includedNamespaces`",
            "`spec.targets[].repositoryTemplate`",
            "`spec.retention.keepLast`",
            "`status.observedGeneration`",
            "`status.conditions[].reason`",
            "`status.missingImages[].nodes`",
            "`spec.source.nodeCache.tolerations`",
            "`status.images[].digestPreserved`",
        ] {
            assert!(text.contains(field), "{field} missing");
        }
        assert!(text.contains("## ImageBackupPolicy") && text.contains("## ImageRestore"));
        assert!(text.contains("default `-1`"));
        assert!(text.contains("unique by name"));
        for rule in crate::schema::all_cel_rules() {
            assert!(text.contains(&cell(rule.message)), "{}", rule.message);
        }
    }

    #[test]
    fn table_cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(first_paragraph("one\ntwo\n\nthree"), "one two");
    }
}
