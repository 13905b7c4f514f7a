//! The model directory's chat template, rendered with minijinja the way transformers' `apply_chat_template`
//! renders it with jinja2: `trim_blocks` and `lstrip_blocks`, `raise_exception(msg)`, Python string methods
//! (`startswith`, `split`, `strip`, ...) through minijinja-contrib's pycompat, and a `tojson` that writes what
//! Python's `json.dumps(x, ensure_ascii=False)` writes (separators `", "` / `": "`, no HTML escaping).
//!
//! Object keys reach the template in `serde_json::Value`'s order (sorted, as this workspace builds serde_json
//! without `preserve_order`); transformers keeps the caller's dict order. Templates read fields by name, so
//! only `tojson` of whole objects (tool schemas, dict arguments) can differ, and only in key order.

use anyhow::{Context, Result, anyhow};
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;
use std::path::Path;

/// The Qwen3 chat template (as shipped in Qwen3's tokenizer_config.json), used by [`crate::train_bpe`] for the
/// CPU demo's model directory and as a test fixture. Real model directories carry their own template.
pub const QWEN3_CHAT_TEMPLATE: &str = include_str!("qwen3_chat_template.jinja");

/// A compiled chat template plus the special-token variables transformers passes to it.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Reads the template of a model directory: `chat_template.jinja` if present (transformers >= 4.43 saves it
    /// there), else `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` from
    /// which "default" is taken).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Option<Value> = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?,
            )
        } else {
            None
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("reading {}", jinja.display()))?
        } else {
            let cfg = cfg.as_ref().ok_or_else(|| {
                anyhow!(
                    "{}: no chat_template.jinja and no tokenizer_config.json",
                    dir.display()
                )
            })?;
            match cfg.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: field `chat_template` has no template named \"default\"",
                            cfg_path.display()
                        )
                    })?,
                _ => {
                    return Err(anyhow!(
                        "{}: missing field `chat_template`",
                        cfg_path.display()
                    ));
                }
            }
        };
        let mut special = Vec::new();
        if let Some(cfg) = &cfg {
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                let text = match cfg.get(key) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Object(o)) => o
                        .get("content")
                        .and_then(|c| c.as_str())
                        .map(str::to_string),
                    _ => None,
                };
                if let Some(t) = text {
                    special.push((key.to_string(), t));
                }
            }
        }
        Self::from_source(&source, special)
            .with_context(|| format!("chat template of {}", dir.display()))
    }

    /// Compiles a template source; `special` are extra variables (`eos_token`, ...) passed to every render.
    pub fn from_source(source: &str, special: Vec<(String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<JValue, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<JValue, Error> {
            Ok(JValue::from(chrono::Utc::now().format(&fmt).to_string()))
        });
        env.add_filter("tojson", tojson_filter);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("compiling: {e:#}"))?;
        Ok(ChatTemplate { env, special })
    }

    /// Renders `messages` (a JSON list of `{role, content, ...}`), with optional `tools` (a JSON list), the
    /// generation prompt, and `enable_thinking` (Qwen3: false emits an empty think block after the prompt).
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        let mut ctx = serde_json::Map::new();
        for (k, v) in &self.special {
            ctx.insert(k.clone(), Value::String(v.clone()));
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("tools".into(), tools.cloned().unwrap_or(Value::Null));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        ctx.insert("enable_thinking".into(), Value::Bool(enable_thinking));
        tmpl.render(JValue::from_serialize(&ctx)).map_err(|e| {
            let mut msg = format!("rendering chat template: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            anyhow!(msg)
        })
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson_filter(v: JValue, kwargs: Kwargs) -> Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<JValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn write_json(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    let newline = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f: f64 = f64::try_from(v.clone())
                    .map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: bad number"))?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => py_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(it, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if sort {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_string(&k.to_string(), out);
                out.push_str(key_sep);
                write_json(&v.get_item(k)?, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => py_string(&v.to_string(), out),
    }
    Ok(())
}

/// Python's `repr(float)` for the values JSON carries.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust: 1e-5 / 1e16; Python: 1e-05 / 1e+16.
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = if let Some(d) = e.strip_prefix('-') {
            ("-", d)
        } else {
            ("+", e)
        };
        return format!("{m}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// A JSON string as Python's json.dumps with ensure_ascii=False writes it.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python() {
        let t = ChatTemplate::from_source("{{ x | tojson }}", vec![]).unwrap();
        let env = &t.env;
        let r = env
            .render_str("{{ x | tojson }}", minijinja::context! { x => serde_json::json!({"a": [1, 2.5, "é<b>&'\"\n"], "b": null, "c": 1e-7, "d": true}) })
            .unwrap();
        assert_eq!(
            r,
            r#"{"a": [1, 2.5, "é<b>&'\"\n"], "b": null, "c": 1e-07, "d": true}"#
        );
    }

    #[test]
    fn qwen3_template_renders_thinking_off() {
        let t = ChatTemplate::from_source(QWEN3_CHAT_TEMPLATE, vec![]).unwrap();
        let m = serde_json::json!([{"role": "user", "content": "hi"}]);
        let s = t.render(&m, None, true, false).unwrap();
        assert_eq!(
            s,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }
}
