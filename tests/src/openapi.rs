//! Checks a JSON value against a schema of an OpenAPI 3.1 document: the subset of
//! JSON Schema the collector's document uses (`$ref` to components, `type` — one or a
//! list, with `null` —, `enum`, `required`, `properties`, `additionalProperties: false`,
//! `items`, `minItems`/`maxItems`, `minimum`/`maximum`; `format`, `pattern`,
//! `description` and `default` are accepted unchecked). A keyword outside the subset
//! fails the test, so the document cannot silently outgrow its check.

use serde_json::Value;

/// Every problem of `value` against `schema` (empty: it conforms), each with its
/// JSON pointer.
pub fn check(document: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(document, schema, value, "", &mut problems);
    problems
}

const KNOWN: &[&str] = &[
    "$ref",
    "type",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "format",
    "pattern",
    "description",
    "default",
];

fn resolve<'a>(document: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local references: {reference}"));
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("dangling reference {reference}"))
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other}"),
    }
}

fn walk(document: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        problems.push(format!("{at}: schema is not an object"));
        return;
    };
    for key in schema.keys() {
        assert!(
            KNOWN.contains(&key.as_str()),
            "schema keyword {key} is not checked"
        );
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        walk(document, resolve(document, reference), value, at, problems);
    }
    if let Some(types) = schema.get("type") {
        let names: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !names.iter().any(|name| type_matches(name, value)) {
            problems.push(format!("{at}: {value} is not of type {types}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |key| schema.get(key).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|min| n < min)
            || bound("maximum").is_some_and(|max| n > max)
        {
            problems.push(format!("{at}: {n} is out of bounds"));
        }
    }
    if let Some(items) = value.as_array() {
        let count = |key| schema.get(key).and_then(Value::as_u64);
        let len = items.len() as u64;
        if count("minItems").is_some_and(|min| len < min)
            || count("maxItems").is_some_and(|max| len > max)
        {
            problems.push(format!("{at}: {len} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                walk(document, item_schema, item, &format!("{at}/{i}"), problems);
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                problems.push(format!("{at}: missing required {name}"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => walk(
                    document,
                    field_schema,
                    field,
                    &format!("{at}/{name}"),
                    problems,
                ),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    problems.push(format!("{at}: undocumented field {name}"));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use serde_json::json;

    #[test]
    fn the_subset_finds_what_a_schema_forbids() {
        let document = json!({"components": {"schemas": {"S": {"type": "string", "enum": ["a"]}}}});
        let schema = json!({
            "type": "object", "additionalProperties": false, "required": ["s", "n"],
            "properties": {
                "s": {"$ref": "#/components/schemas/S"},
                "n": {"type": ["integer", "null"], "minimum": 0},
                "l": {"type": "array", "items": {"type": "boolean"}, "maxItems": 1}
            }
        });
        assert!(check(&document, &schema, &json!({"s": "a", "n": null})).is_empty());
        let problems = check(
            &document,
            &schema,
            &json!({"s": "b", "n": -1, "l": [true, 1], "extra": 0}),
        );
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert_eq!(check(&document, &schema, &json!({})).len(), 2);
    }
}
