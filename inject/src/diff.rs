//! A JSON diff that gives short RFC 6902 patches for what injection does.
//!
//! `json_patch::diff` compares arrays position by position, so putting a
//! container in front of the others becomes a replace of every field of every
//! container after it. Here an array whose old elements all survive, in order,
//! is changed by `add` operations at the new elements' indices, then each
//! surviving element is diffed in place. Elements are matched by their `name`
//! when both are objects with one (containers, env vars, volumes), else by
//! equality. Arrays that changed any other way are diffed position by position.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// The operations that turn `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Patch {
    let mut ops = Vec::new();
    let mut path = PointerBuf::new();
    value(before, after, &mut path, &mut ops);
    Patch(ops)
}

fn value(before: &Value, after: &Value, path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => object(b, a, path, ops),
        (Value::Array(b), Value::Array(a)) => array(b, a, path, ops),
        _ if before == after => {}
        _ => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: path.clone(),
            value: after.clone(),
        })),
    }
}

fn object(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    for (key, a) in after {
        path.push_back(key.as_str());
        match before.get(key) {
            Some(b) => value(b, a, path, ops),
            None => ops.push(PatchOperation::Add(AddOperation {
                path: path.clone(),
                value: a.clone(),
            })),
        }
        path.pop_back();
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        path.push_back(key.as_str());
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: path.clone(),
        }));
        path.pop_back();
    }
}

fn array(before: &[Value], after: &[Value], path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    match align(before, after) {
        Some(matched) => {
            // Insert in increasing index order: each insert lands where
            // `after` has it, since everything before it is already in place.
            for (i, a) in after.iter().enumerate() {
                if matched[i].is_none() {
                    path.push_back(i);
                    ops.push(PatchOperation::Add(AddOperation {
                        path: path.clone(),
                        value: a.clone(),
                    }));
                    path.pop_back();
                }
            }
            for (i, a) in after.iter().enumerate() {
                if let Some(j) = matched[i] {
                    path.push_back(i);
                    value(&before[j], a, path, ops);
                    path.pop_back();
                }
            }
        }
        None => {
            let common = before.len().min(after.len());
            for i in 0..common {
                path.push_back(i);
                value(&before[i], &after[i], path, ops);
                path.pop_back();
            }
            for (i, a) in after.iter().enumerate().skip(common) {
                path.push_back(i);
                ops.push(PatchOperation::Add(AddOperation {
                    path: path.clone(),
                    value: a.clone(),
                }));
                path.pop_back();
            }
            for i in (common..before.len()).rev() {
                path.push_back(i);
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: path.clone(),
                }));
                path.pop_back();
            }
        }
    }
}

/// For each element of `after`, the index of the element of `before` it
/// continues, when every element of `before` is continued in order (greedy
/// subsequence match); `None` when some element of `before` is not.
fn align(before: &[Value], after: &[Value]) -> Option<Vec<Option<usize>>> {
    if before.len() > after.len() {
        return None;
    }
    let mut matched = vec![None; after.len()];
    let mut next = 0;
    for (i, a) in after.iter().enumerate() {
        if next < before.len() && same_element(&before[next], a) {
            matched[i] = Some(next);
            next += 1;
        }
    }
    (next == before.len()).then_some(matched)
}

fn name(v: &Value) -> Option<&str> {
    v.as_object()
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
}

fn same_element(before: &Value, after: &Value) -> bool {
    match (name(before), name(after)) {
        (Some(b), Some(a)) => b == a,
        _ => before == after,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(before: Value, after: Value, expected: Value) {
        let patch = diff(&before, &after);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            expected,
            "{before} → {after}"
        );
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after);
    }

    #[test]
    fn inserts_into_arrays_by_name() {
        check(
            json!({"c": [{"name": "a", "x": 1}, {"name": "b"}]}),
            json!({"c": [{"name": "p"}, {"name": "a", "x": 2}, {"name": "q"}, {"name": "b", "env": []}]}),
            json!([
                {"op": "add", "path": "/c/0", "value": {"name": "p"}},
                {"op": "add", "path": "/c/2", "value": {"name": "q"}},
                {"op": "replace", "path": "/c/1/x", "value": 2},
                {"op": "add", "path": "/c/3/env", "value": []},
            ]),
        );
        check(
            json!(["a", "b"]),
            json!(["a", "b", "c"]),
            json!([{"op": "add", "path": "/2", "value": "c"}]),
        );
    }

    #[test]
    fn falls_back_to_positions() {
        check(
            json!(["a", "b", "c"]),
            json!(["x", "b"]),
            json!([
                {"op": "replace", "path": "/0", "value": "x"},
                {"op": "remove", "path": "/2"},
            ]),
        );
        check(
            json!([{"name": "a"}, {"name": "b"}]),
            json!([{"name": "b"}, {"name": "a"}]),
            json!([
                {"op": "replace", "path": "/0/name", "value": "b"},
                {"op": "replace", "path": "/1/name", "value": "a"},
            ]),
        );
        check(
            json!([1, 2, 3, 4]),
            json!([1]),
            json!([
                {"op": "remove", "path": "/3"},
                {"op": "remove", "path": "/2"},
                {"op": "remove", "path": "/1"},
            ]),
        );
    }

    #[test]
    fn escapes_keys() {
        check(
            json!({"metadata": {"annotations": {"a/b": "1"}}}),
            json!({"metadata": {"annotations": {"a/b": "1", "divert.dev/injected": "v", "t~x": "y"}}}),
            json!([
                {"op": "add", "path": "/metadata/annotations/divert.dev~1injected", "value": "v"},
                {"op": "add", "path": "/metadata/annotations/t~0x", "value": "y"},
            ]),
        );
    }

    #[test]
    fn objects_and_scalars() {
        check(json!({"a": 1}), json!({"a": 1}), json!([]));
        check(
            json!({"a": 1, "b": {"c": true}}),
            json!({"b": {"c": false}, "d": null}),
            json!([
                {"op": "replace", "path": "/b/c", "value": false},
                {"op": "add", "path": "/d", "value": null},
                {"op": "remove", "path": "/a"},
            ]),
        );
        check(
            json!(1),
            json!("x"),
            json!([{"op": "replace", "path": "", "value": "x"}]),
        );
    }
}
