//! Dataset verbs, top-level as in zfs(8): list, destroy, get, set. Also the property model
//! shared with `vol create`.

use super::{execute, expect_dataset, open_for, parse_assignment, pool_of_any};
use crate::cli::{DestroyArgs, GetArgs, ListArgs, SetArgs};
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::registry::Registry;
use ::pool::request::Request;
use ::pool::{
    builtin_prop as builtin, DatasetInfo, DatasetKind, Pool, Recursion, BUILTIN_PROPS as BUILTIN,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// Checks a user property name (the pool enforces the same rule) and that it is not built in.
pub fn check_user_prop(k: &str) -> Result<()> {
    if let Some(b) = builtin(k) {
        return Err(CliError::Usage(format!(
            "property '{k}' is built in ({b}) and read-only here"
        )));
    }
    if k.is_empty()
        || k.len() > 255
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(CliError::Usage(format!(
            "property name '{k}' must be 1-255 letters, digits, '_', '.', ':' or '-'"
        )));
    }
    Ok(())
}

/// The stored form of a `refreservation` value: `none` (stored as removal), `auto` (the
/// volume's size, following it) or a size.
pub fn refreservation_value(v: &str) -> Result<String> {
    match v {
        "none" => Ok(String::new()),
        "auto" => Ok("auto".into()),
        size => Ok(zvol::parse_size(size)?.to_string()),
    }
}

fn kind_name(k: DatasetKind) -> &'static str {
    match k {
        DatasetKind::Volume => "volume",
        DatasetKind::Filesystem => "filesystem",
        DatasetKind::Snapshot => "snapshot",
    }
}

/// One property's value: for humans, for machines, and where it comes from.
pub struct PropValue {
    /// Display text (`-` when unset).
    pub text: String,
    /// JSON value (`null` when unset).
    pub json: Value,
    /// `-` for built-ins and unset user properties, `local` for user properties.
    pub source: &'static str,
}

/// The value of `prop` (canonical or user) on `d`.
pub fn prop_value(d: &DatasetInfo, prop: &str, parsable: bool) -> PropValue {
    let b = |text: String, json: Value| PropValue {
        text,
        json,
        source: "-",
    };
    match builtin(prop) {
        Some("name") => b(d.name.clone(), Value::from(d.name.clone())),
        Some("type") => b(kind_name(d.kind).into(), Value::from(kind_name(d.kind))),
        Some("volsize") => b(output::size(d.size, parsable), Value::from(d.size)),
        Some("volblocksize") => b(
            output::size(u64::from(d.block_size), parsable),
            Value::from(d.block_size),
        ),
        Some("used") => b(output::size(d.used, parsable), Value::from(d.used)),
        Some("referenced") => b(
            output::size(d.referenced, parsable),
            Value::from(d.referenced),
        ),
        Some("written") => b(output::size(d.written, parsable), Value::from(d.written)),
        Some("usedbysnapshots") => b(
            output::size(d.usedbysnapshots, parsable),
            Value::from(d.usedbysnapshots),
        ),
        Some("refreservation") if d.kind == DatasetKind::Snapshot => b("-".into(), Value::Null),
        Some("refreservation") if d.refreservation == 0 => b("none".into(), Value::from(0)),
        Some("refreservation") => b(
            output::size(d.refreservation, parsable),
            Value::from(d.refreservation),
        ),
        Some("usedbyrefreservation") => b(
            output::size(d.usedbyrefreservation, parsable),
            Value::from(d.usedbyrefreservation),
        ),
        Some("origin") => match &d.origin {
            Some(o) => b(o.clone(), Value::from(o.clone())),
            None => b("-".into(), Value::Null),
        },
        Some("clones") => b(
            if d.clones.is_empty() {
                "-".into()
            } else {
                d.clones.join(",")
            },
            Value::from(d.clones.clone()),
        ),
        Some("holds") => b(
            if d.holds.is_empty() {
                "-".into()
            } else {
                d.holds.join(",")
            },
            Value::from(d.holds.clone()),
        ),
        // A string, as in every other JSON output (`pool::guid_as_string`).
        Some("guid") => b(d.guid.to_string(), Value::from(d.guid.to_string())),
        Some("creation") => b(
            output::time(d.creation_time, parsable),
            Value::from(d.creation_time),
        ),
        Some("createtxg") => b(d.creation_txg.to_string(), Value::from(d.creation_txg)),
        Some("id") => b(d.id.to_string(), Value::from(d.id)),
        Some("pool") => {
            let p = d.name.split('/').next().unwrap_or_default().to_string();
            b(p.clone(), Value::from(p))
        }
        _ => match d.props.get(prop) {
            Some(v) => PropValue {
                text: v.clone(),
                json: Value::from(v.clone()),
                source: "local",
            },
            None => b("-".into(), Value::Null),
        },
    }
}

/// Canonical names for a comma-separated property list (`all` = built-ins then user props).
fn prop_list(spec: &str, d: Option<&DatasetInfo>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in spec.split(',').map(str::trim) {
        if p.is_empty() {
            return Err(CliError::Usage(format!(
                "'{spec}' has an empty property name"
            )));
        }
        if p == "all" {
            out.extend(BUILTIN.iter().map(|s| s.to_string()));
            if let Some(d) = d {
                out.extend(d.props.keys().cloned());
            }
        } else if let Some(b) = builtin(p) {
            out.push(b.to_string());
        } else {
            check_user_prop(p)?;
            out.push(p.to_string());
        }
    }
    Ok(out)
}

fn parse_types(spec: &str) -> Result<Vec<DatasetKind>> {
    let mut out = Vec::new();
    for t in spec.split(',').map(str::trim) {
        match t {
            "all" => out.extend([
                DatasetKind::Volume,
                DatasetKind::Filesystem,
                DatasetKind::Snapshot,
            ]),
            "volume" | "vol" => out.push(DatasetKind::Volume),
            "filesystem" | "fs" => out.push(DatasetKind::Filesystem),
            "snapshot" | "snap" => out.push(DatasetKind::Snapshot),
            other => {
                return Err(CliError::Usage(format!(
                    "unknown dataset type '{other}' (expected volume, filesystem, snapshot or all)"
                )))
            }
        }
    }
    Ok(out)
}

/// Every volume and snapshot with its space figures (read from the pool's deadlists).
fn list_datasets(pool: &Pool) -> Result<Vec<DatasetInfo>> {
    Ok(pool.list()?)
}

/// `tarn list [POOL | POOL/NAME] [-t TYPES] [-o PROPS] [--json]`
pub fn list(reg: &Registry, a: &ListArgs) -> Result<()> {
    let default_types = match &a.target {
        Some(t) if t.contains('@') => "snapshot",
        _ => "volume,filesystem",
    };
    let types = parse_types(a.types.as_deref().unwrap_or(default_types))?;
    let props = match &a.props {
        Some(p) => Some(prop_list(p, None)?),
        None => None,
    };
    let (pools, prefix) = match &a.target {
        Some(t) if t.contains('/') => {
            let pool = pool_of_any(t)?;
            (vec![reg.require(pool)?], Some(t.clone()))
        }
        Some(p) => {
            ::pool::names::check_pool_name(p)?;
            (vec![reg.require(p)?], None)
        }
        None => (reg.list()?, None),
    };
    let mut rows: Vec<DatasetInfo> = Vec::new();
    let mut failed = Vec::new();
    let single = a.target.is_some();
    for entry in &pools {
        let opened = crate::registry::open_entry(entry).and_then(|p| list_datasets(&p));
        match opened {
            Ok(ds) => rows.extend(ds),
            Err(e) if single => return Err(e),
            Err(e) => {
                say!("tarn: cannot list pool {}: {}", entry.name, e.one_line());
                failed.push(entry.name.clone());
            }
        }
    }
    if let Some(p) = &prefix {
        rows.retain(|d| {
            d.name == *p
                || d.name.starts_with(&format!("{p}/"))
                || d.name.starts_with(&format!("{p}@"))
        });
        // Whether it exists, whatever the types asked for (a volume without snapshots lists
        // none of them, as a pool does).
        if rows.is_empty() {
            return Err(::pool::Error::NotFound(p.clone()).into());
        }
    }
    rows.retain(|d| types.contains(&d.kind));
    let parsable = a.fmt.parsable;
    match (&props, a.fmt.json) {
        (None, true) => output::print_json(&rows)?,
        (Some(props), true) => {
            // Keys in the order asked for, as the table's columns; each once.
            let mut keys: Vec<&String> = Vec::new();
            for p in props {
                if !keys.contains(&p) {
                    keys.push(p);
                }
            }
            let objs: Vec<output::OrderedObject> = rows
                .iter()
                .map(|d| {
                    output::OrderedObject(
                        keys.iter()
                            .map(|p| (p.to_string(), prop_value(d, p, true).json))
                            .collect(),
                    )
                })
                .collect();
            output::print_json(&objs)?;
        }
        (props, false) => {
            let default: Vec<String> = [
                "name",
                "type",
                "volsize",
                "used",
                "referenced",
                "written",
                "volblocksize",
            ]
            .map(String::from)
            .to_vec();
            let props = props.as_ref().unwrap_or(&default);
            if rows.is_empty() && !a.fmt.scripted {
                output::print_str("no datasets available\n")?;
            } else {
                let right = props
                    .iter()
                    .map(|p| {
                        matches!(
                            p.as_str(),
                            "volsize"
                                | "volblocksize"
                                | "used"
                                | "referenced"
                                | "written"
                                | "usedbysnapshots"
                                | "refreservation"
                                | "usedbyrefreservation"
                                | "createtxg"
                                | "id"
                                | "guid"
                        )
                    })
                    .collect();
                let mut t = Table::new(props.iter().map(|p| p.to_uppercase()).collect(), right);
                for d in &rows {
                    t.row(
                        props
                            .iter()
                            .map(|p| prop_value(d, p, parsable).text)
                            .collect(),
                    );
                }
                t.print(a.fmt.scripted)?;
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "could not list pools: {}",
            failed.join(", ")
        )))
    }
}

/// `tarn destroy [-r|-R] POOL/NAME[@SNAP]`
pub fn destroy(reg: &Registry, a: &DestroyArgs) -> Result<()> {
    let full = a.dataset.as_str();
    let (pool, _) = open_for(reg, full)?;
    let rec = match (a.recursive, a.dependents) {
        (_, true) => Recursion::All,
        (true, false) => Recursion::Snapshots,
        (false, false) => Recursion::None,
    };
    if rec == Recursion::None {
        execute(
            &pool,
            Request::Destroy {
                name: full.to_string(),
            },
        )?;
    } else {
        pool.destroy_with(full, rec)?;
    }
    Ok(pool.close()?)
}

#[derive(serde::Serialize)]
struct GetRow {
    name: String,
    property: String,
    value: Value,
    source: &'static str,
}

/// `tarn get PROP[,PROP...] POOL/NAME...`
pub fn get(reg: &Registry, a: &GetArgs) -> Result<()> {
    // Check every name and property before opening anything.
    for d in &a.datasets {
        pool_of_any(d)?;
    }
    prop_list(&a.props, None)?;
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    let mut table = Table::new(
        ["NAME", "PROPERTY", "VALUE", "SOURCE"]
            .map(String::from)
            .to_vec(),
        vec![false; 4],
    );
    let mut json = Vec::new();
    for full in &a.datasets {
        let pool_name = pool_of_any(full)?.to_string();
        if !pools.contains_key(&pool_name) {
            let (p, _) = reg.open(&pool_name)?;
            pools.insert(pool_name.clone(), p);
        }
        let Some(pool) = pools.get(&pool_name) else {
            continue;
        };
        let d = pool.dataset(full)?;
        for p in prop_list(&a.props, Some(&d))? {
            let v = prop_value(&d, &p, a.fmt.parsable);
            table.row(vec![d.name.clone(), p.clone(), v.text, v.source.into()]);
            json.push(GetRow {
                name: d.name.clone(),
                property: p,
                value: v.json,
                source: v.source,
            });
        }
    }
    // Read-only: the pools are dropped without committing.
    drop(pools);
    if a.fmt.json {
        output::print_json(&json)
    } else {
        table.print(a.fmt.scripted)
    }
}

/// `tarn set KEY=VALUE... POOL/NAME[@SNAP]` (user properties; `volsize` grows a volume).
pub fn set(reg: &Registry, a: &SetArgs) -> Result<()> {
    // Snapshots take user properties (as in ZFS); their size is frozen.
    let snapshot = a.dataset.contains('@');
    pool_of_any(&a.dataset)?;
    let mut user = Vec::new();
    let mut volsize = None;
    for s in &a.assignments {
        let (k, v) = parse_assignment(s)?;
        match builtin(&k) {
            Some("refreservation") if snapshot => {
                return Err(CliError::Usage(format!(
                    "{} is a snapshot: only a volume has a refreservation",
                    a.dataset
                )));
            }
            Some("refreservation") => user.push((
                ::pool::REFRESERVATION_PROP.to_string(),
                refreservation_value(&v)?,
            )),
            Some("volsize") if snapshot => {
                return Err(CliError::Usage(format!(
                    "{} is a snapshot: its volsize is frozen (set user properties only)",
                    a.dataset
                )));
            }
            Some("volsize") => volsize = Some(zvol::parse_size(&v)?),
            Some(b) => {
                return Err(CliError::Usage(format!("property '{b}' is read-only")));
            }
            None => {
                check_user_prop(&k)?;
                ::pool::check_prop(&k, &v)?;
                user.push((k, v));
            }
        }
    }
    let (pool, info) = open_for(reg, &a.dataset)?;
    if let Some(size) = volsize {
        if size < info.size {
            return Err(CliError::Usage(format!(
                "volsize {} is smaller than {} ({}); shrinking discards data: use `tarn vol resize --shrink`",
                zvol::format_size(size),
                a.dataset,
                zvol::format_size(info.size)
            )));
        }
        expect_dataset(execute(
            &pool,
            Request::ResizeVolume {
                name: a.dataset.clone(),
                size,
            },
        )?)?;
    }
    if !user.is_empty() {
        execute(
            &pool,
            Request::SetProps {
                name: a.dataset.clone(),
                props: user,
            },
        )?;
    }
    Ok(pool.close()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve() {
        assert_eq!(builtin("size"), Some("volsize"));
        assert_eq!(builtin("blocksize"), Some("volblocksize"));
        assert_eq!(builtin("USED"), Some("used"));
        assert_eq!(builtin("com.example:owner"), None);
        assert!(check_user_prop("used").is_err());
        assert!(check_user_prop("a b").is_err());
        assert!(check_user_prop("com.example:owner").is_ok());
    }
}
