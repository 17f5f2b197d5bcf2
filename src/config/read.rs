//! Reading the file: TOML text → a spanned tree → each section, and each
//! element of an array section, deserialized on its own, so one bad field
//! never hides the rest. Every problem names its field (`route[2].roles`)
//! and where it is (`line 31, column 9`), in plain words.
//!
//! What it must not do: echo a string value it rejects (it may be a
//! secret written where a `{ env = … }` belongs), or judge values; the
//! meaning of values is `validate`'s job, which runs afterwards on every
//! part that could be read.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::{Spanned, de::Error as TomlError};

use super::{RawConfig, assertion, auth, limits, sessions};

/// Sections holding one table (`[tailnet]`).
const TABLES: [&str; 8] = [
    "tailnet",
    "loopback",
    "admin",
    "public",
    "portal",
    "limits",
    "sessions",
    "assertion",
];
/// Sections holding an array of tables (`[[route]]`).
const ARRAYS: [&str; 4] = ["node", "route", "provider", "rule"];

/// The file as read: what could be deserialized, which sections had a part
/// that could not (their cross-checks are skipped, so a bad `[[node]]`
/// does not also make every route's `node` "unknown"), and the problems.
pub(super) struct Read {
    pub(super) raw: RawConfig,
    pub(super) failed: HashSet<&'static str>,
    pub(super) problems: Vec<String>,
}

/// Line and column (both from 1) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() + 1;
    (line, column)
}

fn at_line(text: &str, span: &Range<usize>) -> String {
    format!("line {}", line_col(text, span.start).0)
}

fn at_line_col(text: &str, span: &Range<usize>) -> String {
    let (l, c) = line_col(text, span.start);
    format!("line {l}, column {c}")
}

/// Parses `text`. `Err`: TOML syntax errors, all of them (nothing else is
/// judged in a file that is not TOML).
pub(super) fn parse(text: &str) -> Result<Spanned<DeTable<'_>>, Vec<String>> {
    let (tree, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Ok(tree);
    }
    Err(errors.iter().map(|e| syntax_problem(text, e)).collect())
}

fn syntax_problem(text: &str, e: &TomlError) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let at = at_line_col(text, &span);
            match field_at(text, span.start) {
                Some(f) => format!("{f}: {msg} ({at})"),
                None => format!("{msg} ({at})"),
            }
        }
        None => msg.to_string(),
    }
}

/// The field a byte offset belongs to, read from the text (the tree may
/// lack it after a syntax error): the last `[table]`/`[[array]]` header
/// before it, counted, and the key on its line.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut section: Option<String> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let end = pos + line.len();
        let t = line.trim();
        let header = if let Some(n) = t.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = n.0.trim().to_string();
            let c = counts.entry(name.clone()).or_default();
            *c += 1;
            Some(format!("{name}[{}]", *c - 1))
        } else if let Some(n) = t.strip_prefix('[').and_then(|r| r.split_once(']')) {
            let name = n.0.trim();
            let (first, rest) = name.split_once('.').unwrap_or((name, ""));
            Some(match counts.get(first) {
                Some(c) if !rest.is_empty() => format!("{first}[{}].{rest}", c - 1),
                _ => name.to_string(),
            })
        } else {
            None
        };
        if offset < end || end == text.len() {
            if header.is_some() {
                return header;
            }
            let key = t.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
            });
            return match (section, key) {
                (Some(s), Some(k)) => Some(format!("{s}.{}", k.trim_matches('"'))),
                (s, None) => s,
                (None, Some(k)) => Some(k.trim_matches('"').to_string()),
            };
        }
        if header.is_some() {
            section = header;
        }
        pos = end;
    }
    section
}

/// Deserializes every section of `tree` on its own.
pub(super) fn sections(text: &str, tree: Spanned<DeTable<'_>>) -> Read {
    let mut r = Reader {
        text,
        problems: Vec::new(),
        failed: HashSet::new(),
    };
    let mut raw = RawConfig::default();
    for (key, value) in tree.into_inner() {
        let name = key.get_ref().as_ref();
        match name {
            "tailnet" => raw.tailnet = r.table("tailnet", value).unwrap_or_default(),
            "loopback" => raw.loopback = r.table("loopback", value),
            "admin" => raw.admin = r.table("admin", value),
            "public" => raw.public = r.table("public", value),
            "portal" => raw.portal = r.table::<auth::RawPortal>("portal", value),
            "limits" => raw.limits = r.table::<limits::RawLimits>("limits", value),
            "sessions" => raw.sessions = r.table::<sessions::RawSessions>("sessions", value),
            "assertion" => raw.assertion = r.table::<assertion::RawAssertion>("assertion", value),
            "node" => raw.node = r.array("node", value),
            "route" => raw.route = r.array("route", value),
            "provider" => raw.provider = r.array("provider", value),
            "rule" => raw.rule = r.array("rule", value),
            other => r.unknown_section(other, key.span()),
        }
    }
    Read {
        raw,
        failed: r.failed,
        problems: r.problems,
    }
}

struct Reader<'t> {
    text: &'t str,
    problems: Vec<String>,
    failed: HashSet<&'static str>,
}

impl Reader<'_> {
    fn unknown_section(&mut self, name: &str, span: Range<usize>) {
        let known: Vec<&str> = TABLES.iter().chain(&ARRAYS).copied().collect();
        let hint = suggest(name, &known);
        self.problems.push(format!(
            "{name}: unknown section; {hint} ({})",
            at_line(self.text, &span)
        ));
    }

    /// A one-table section (`[tailnet]`); `None` when it could not be read.
    fn table<'de, T: Deserialize<'de>>(
        &mut self,
        name: &'static str,
        value: Spanned<DeValue<'de>>,
    ) -> Option<T> {
        let span = value.span();
        match value.get_ref() {
            DeValue::Table(_) => self.element(name, name.to_string(), value),
            DeValue::Array(_) => {
                self.failed.insert(name);
                self.problems.push(format!(
                    "{name}: [[{name}]] must be [{name}] (one table) ({})",
                    at_line(self.text, &span)
                ));
                None
            }
            other => {
                self.failed.insert(name);
                self.problems.push(format!(
                    "{name}: expected a [{name}] table, found {} ({})",
                    found_value(other),
                    at_line(self.text, &span)
                ));
                None
            }
        }
    }

    /// An array-of-tables section (`[[route]]`): each element read on its
    /// own; `None` for an element that could not be.
    fn array<'de, T: Deserialize<'de>>(
        &mut self,
        name: &'static str,
        value: Spanned<DeValue<'de>>,
    ) -> Vec<Option<T>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| self.element(name, format!("{name}[{i}]"), item))
                .collect(),
            DeValue::Table(_) => {
                self.failed.insert(name);
                self.problems.push(format!(
                    "{name}: [{name}] must be [[{name}]] (an array of tables) ({})",
                    at_line(self.text, &span)
                ));
                Vec::new()
            }
            other => {
                self.failed.insert(name);
                self.problems.push(format!(
                    "{name}: expected [[{name}]] tables, found {} ({})",
                    found_value(&other),
                    at_line(self.text, &span)
                ));
                Vec::new()
            }
        }
    }

    /// One table deserialized; a failure is a problem naming its field.
    fn element<'de, T: Deserialize<'de>>(
        &mut self,
        section: &'static str,
        path: String,
        value: Spanned<DeValue<'de>>,
    ) -> Option<T> {
        let tree = value.clone();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.failed.insert(section);
                self.problems
                    .push(element_problem(self.text, &path, section, &tree, &e));
                None
            }
        }
    }
}

/// A deserialization error of one element as `field: what (line …)`.
fn element_problem(
    text: &str,
    path: &str,
    section: &str,
    tree: &Spanned<DeValue<'_>>,
    e: &TomlError,
) -> String {
    let msg = e.message();
    let span = e.span().unwrap_or_else(|| tree.span());
    let found = locate(tree, &span);
    let mut field = path.to_string();
    for seg in &found {
        match seg {
            Seg::Key(k) => {
                field.push('.');
                field.push_str(k);
            }
            Seg::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    if let Some(name) = backticked(msg, "missing field ").first() {
        let kind = if TABLES.contains(&section) {
            format!("[{section}]")
        } else {
            format!("[[{section}]]")
        };
        return format!(
            "{field}.{name}: missing; every {kind} needs it ({})",
            at_line(text, &span)
        );
    }
    if msg.starts_with("unknown field ") {
        let known = backticked(msg, "expected ");
        let unknown = backticked(msg, "unknown field ");
        let name = unknown.first().map_or("", String::as_str);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        return format!(
            "{field}: unknown field; {} ({})",
            suggest(name, &known),
            at_line(text, &span)
        );
    }
    let leaf = found.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Index(_) => None,
    });
    format!(
        "{field}: {} ({})",
        type_message(leaf.unwrap_or(""), msg),
        at_line_col(text, &span)
    )
}

/// Names in backticks after `after` in a serde message (`unknown field
/// `x`, expected one of `a`, `b``).
fn backticked(msg: &str, after: &str) -> Vec<String> {
    let Some(i) = msg.find(after) else {
        return Vec::new();
    };
    let rest = &msg[i + after.len()..];
    // Only the list right after `after`: stop at the next ", expected".
    let rest = match (after, rest.find(", expected")) {
        ("unknown field " | "missing field ", Some(j)) => &rest[..j],
        _ => rest,
    };
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

enum Seg {
    Key(String),
    Index(usize),
}

/// The path from `tree` to the key or value spanning `span` (deepest).
fn locate(tree: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Vec<Seg> {
    let inside = |s: Range<usize>| s.start <= span.start && span.end <= s.end;
    match tree.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                let sub = locate(v, span);
                if k.span() == *span || inside(v.span()) || !sub.is_empty() {
                    let mut path = vec![Seg::Key(k.get_ref().to_string())];
                    path.extend(sub);
                    return path;
                }
            }
            Vec::new()
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let sub = locate(v, span);
                if inside(v.span()) || !sub.is_empty() {
                    let mut path = vec![Seg::Index(i)];
                    path.extend(sub);
                    return path;
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// A value's kind in words, never a string's content (it may be a secret).
fn found_value(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(_) => "a string".into(),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(_) => "a date".into(),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// serde's `invalid type: string "x", expected a sequence` in plain words,
/// with an example for the lists users write most.
fn type_message(leaf: &str, msg: &str) -> String {
    let parsed = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .and_then(|r| r.rsplit_once(", expected "));
    if msg.starts_with("data did not match any variant of untagged enum RawCert") {
        return "expected a name like \"local-ca\" or { cert_file = \"/path\", key_file = \"/path\" }"
            .into();
    }
    let Some((found, expected)) = parsed else {
        return msg.to_string();
    };
    let found = match found.split_once(' ') {
        _ if found.starts_with("string") => "a string".to_string(),
        Some(("integer" | "floating", rest)) => {
            format!(
                "the number {}",
                rest.trim_start_matches("point ").trim_matches('`')
            )
        }
        Some(("boolean", b)) => b.trim_matches('`').to_string(),
        _ if found == "sequence" => "a list".to_string(),
        _ if found == "map" => "a table".to_string(),
        _ => found.to_string(),
    };
    format!("expected {}, found {found}", expected_words(leaf, expected))
}

fn expected_words(leaf: &str, expected: &str) -> String {
    match expected {
        "a sequence" => match leaf {
            "roles" => "a list of role names like [\"user\"]".into(),
            "allow_users" | "tailnet_users" => {
                "a list of logins like [\"alice@example.com\"]".into()
            }
            "tags" | "allow_tags" => "a list of tags like [\"tag:web\"]".into(),
            "methods" => "a list of methods like [\"GET\", \"POST\"]".into(),
            _ => "a list like [\"…\"]".into(),
        },
        "a boolean" => "true or false".into(),
        "a string" => "a string in quotes".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        e if e.starts_with("struct ") || e == "a map" => "a table".into(),
        e => e.to_string(),
    }
}

/// `did you mean "x"?` when a known name is close to `name`, else the
/// known names.
pub(super) fn suggest(name: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| {
            *d <= (name.len() / 3).max(2)
                || (name.len() >= 3 && k.len() >= 3 && (name.contains(k) || k.contains(name)))
        })
        // A name that contains the other (`upstream_url`, `port` for
        // `https_port`) first, then the fewest edits.
        .min_by_key(|(d, k)| (!(name.contains(k) || k.contains(name)), *d));
    match close {
        Some((_, k)) => format!("did you mean {k:?}?"),
        None if known.is_empty() => "this table has no fields".into(),
        None => format!("known: {}", known.join(", ")),
    }
}

/// Levenshtein distance (names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `" (line L)"` for the field a semantic problem names (`route[5].path:
/// …`), or for its nearest enclosing part found in the file; empty when
/// the problem names nothing in the file.
pub(super) fn locate_problem(text: &str, tree: &Spanned<DeTable<'_>>, problem: &str) -> String {
    let Some((field, _)) = problem.split_once(": ") else {
        return String::new();
    };
    let path_like = field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c));
    if !path_like || problem.contains("(line ") {
        return String::new();
    }
    let mut span: Option<Range<usize>> = None;
    let mut table = Some(tree.get_ref());
    for part in field.split('.') {
        let (key, indices) = part.split_once('[').unwrap_or((part, ""));
        let Some((k, v)) = table.and_then(|t| t.iter().find(|(k, _)| k.get_ref() == key)) else {
            break;
        };
        span = Some(k.span());
        let mut value = v;
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let i: Option<usize> = idx.trim_end_matches(']').parse().ok();
            let Some(item) = i.and_then(|i| value.get_ref().as_array()?.get(i)) else {
                break;
            };
            span = Some(item.span());
            value = item;
        }
        table = value.get_ref().as_table();
    }
    span.map_or(String::new(), |s| format!(" ({})", at_line(text, &s)))
}
